#!/usr/bin/env node
// clients.mjs — opens N signaling WebSockets to one server on loopback, joins them to rooms,
// holds them, closes them, and reports the SERVER process's resident memory at each step.
//
//   node clients.mjs --url ws://127.0.0.1:18080/ws --pid SERVER_PID [--participants 5000]
//
// Phases, each with a deadline:
//   1. read the server's VmRSS (before)
//   2. connect N sockets (at most --concurrency handshakes in flight); each sends
//      {"type":"join","room":"bench-<floor(i/room-size)>","name":"p<i>"} and waits for its welcome
//   3. one signal per room (the last joiner → the first member), checked on arrival, so the
//      relay path has run once on every room
//   4. settle (--settle-joined seconds), read VmRSS (joined)
//   5. close every socket (close handshake; stragglers terminated at the deadline)
//   6. settle (--settle-closed seconds), read VmRSS (after)
// and prints one JSON object on stdout:
//   per_participant_kib = (joined - before) / N
//   given_back_fraction = (joined - after) / (joined - before)
// plus failure counts: a run with any failure is reported, not hidden (compare.sh flags it).
//
// Loopback only: the URL's host must be a literal 127.0.0.0/8 or ::1 address.

import { checks, isLoopback, options, round, sleep, withDeadline as deadline } from './args.mjs';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

const HARD_MAX_PARTICIPANTS = 50000;

const args = options(process.argv.slice(2), {
  url: '',
  pid: '',
  participants: '5000',
  'room-size': '6',
  concurrency: '200',
  'settle-joined': '2',
  'settle-closed': '3',
  'connect-timeout': '120',
  'close-timeout': '60',
  label: '',
}, 'clients.mjs');
const { fail, intArg, numArg } = checks(args, 'clients.mjs');

const url = new URL(args.url || fail('--url is required'));
if (url.protocol !== 'ws:') fail(`only ws:// URLs (got ${url.protocol})`);
const urlHost = url.hostname.replace(/^\[|\]$/g, '');
if (!isLoopback(urlHost)) {
  fail(`refusing ${url.hostname}: loopback addresses only (127.0.0.0/8 or [::1])`);
}
const pid = intArg('pid', 1, 2 ** 22);
const n = intArg('participants', 1, HARD_MAX_PARTICIPANTS);
const roomSize = intArg('room-size', 1, 16);
const concurrency = intArg('concurrency', 1, 5000);
const settleJoined = numArg('settle-joined', 0, 60);
const settleClosed = numArg('settle-closed', 0, 60);
const connectTimeout = numArg('connect-timeout', 1, 900);
const closeTimeout = numArg('close-timeout', 1, 900);

// Fail early if the PID is not readable: every number below depends on it.
const status0 = procStatus();

/** Per participant: {ws, id, welcomed, peers, expectSignalFrom, onSignal} */
const clients = new Array(n);
const counts = {
  welcomes: 0,
  welcome_failures: 0,
  peer_list_mismatches: 0,
  server_errors: 0,
  connect_errors: 0,
  dropped_while_held: 0,
  signals_sent: 0,
  signals_received: 0,
  signal_failures: 0,
};
let phase = 'connect';
const firstErrors = [];

const rssBefore = status0.VmRSS;
const anonBefore = status0.RssAnon;
const cpuBefore = procCpuSeconds();
const t0 = performance.now();

// --- connect and join -------------------------------------------------------------------------
await withDeadline(connectTimeout, 'connect+join', new Promise((resolve) => {
  let next = 0;
  let settled = 0;
  const launch = () => {
    while (next < n && next - settled < concurrency) open(next++, onSettled);
  };
  const onSettled = () => {
    settled++;
    if (settled === n) resolve();
    else launch();
  };
  launch();
}));
const joinedCount = clients.filter((c) => c && c.welcomed).length;
counts.welcome_failures = n - joinedCount;
checkPeerLists();
const connectSeconds = (performance.now() - t0) / 1000;
const cpuConnect = procCpuSeconds() - cpuBefore;

// --- one signal per room ----------------------------------------------------------------------
phase = 'signal';
await withDeadline(30, 'signal', new Promise((resolve) => {
  const pending = [];
  for (let first = 0; first < n; first += roomSize) {
    const last = Math.min(first + roomSize, n) - 1;
    if (last === first) continue;
    const from = clients[last];
    const to = clients[first];
    if (!from?.welcomed || !to?.welcomed) continue;
    pending.push(to);
    to.expectSignalFrom = from.id;
    from.ws.send(JSON.stringify({ type: 'signal', to: to.id, data: { sdp: `bench ${last}` } }));
    counts.signals_sent++;
  }
  if (pending.length === 0) return resolve();
  let left = pending.length;
  for (const c of pending) {
    c.onSignal = () => { if (--left === 0) resolve(); };
  }
}));
counts.signal_failures = counts.signals_sent - counts.signals_received;

// --- hold ---------------------------------------------------------------------------------------
phase = 'hold';
await sleep(settleJoined);
const statusJoined = procStatus();
const stillOpen = clients.filter((c) => c?.ws.readyState === WebSocket.OPEN).length;

// --- close --------------------------------------------------------------------------------------
phase = 'close';
const tClose = performance.now();
await withDeadline(closeTimeout, 'close', new Promise((resolve) => {
  let open = 0;
  const onClosed = () => { if (--open === 0) resolve(); };
  for (const c of clients) {
    if (!c || c.ws.readyState === WebSocket.CLOSED) continue;
    open++;
    c.ws.once('close', onClosed);
    c.ws.close(1000);
  }
  if (open === 0) resolve();
}));
let terminated = 0;
for (const c of clients) {
  if (c && c.ws.readyState !== WebSocket.CLOSED) {
    terminated++;
    c.ws.terminate();
  }
}
const closeSeconds = (performance.now() - tClose) / 1000;
await sleep(settleClosed);
const statusAfter = procStatus();

const joinedDelta = statusJoined.VmRSS - rssBefore;
const result = {
  label: args.label || undefined,
  url: url.href,
  participants: n,
  room_size: roomSize,
  joined: joinedCount,
  open_at_measurement: stillOpen,
  ...counts,
  terminated_at_close: terminated,
  ok: joinedCount === n && counts.signal_failures === 0 && counts.peer_list_mismatches === 0
    && counts.server_errors === 0 && stillOpen === n && counts.dropped_while_held === 0,
  rss_before_kib: rssBefore,
  rss_joined_kib: statusJoined.VmRSS,
  rss_after_kib: statusAfter.VmRSS,
  rss_peak_kib: statusAfter.VmHWM,
  anon_before_kib: anonBefore,
  anon_joined_kib: statusJoined.RssAnon,
  anon_after_kib: statusAfter.RssAnon,
  threads_joined: statusJoined.Threads,
  per_participant_kib: round(joinedDelta / n, 3),
  given_back_fraction: joinedDelta > 0
    ? round((statusJoined.VmRSS - statusAfter.VmRSS) / joinedDelta, 4) : null,
  connect_seconds: round(connectSeconds, 3),
  close_seconds: round(closeSeconds, 3),
  server_cpu_seconds_connect: round(cpuConnect, 3),
  first_errors: firstErrors.length ? firstErrors : undefined,
};
process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));

// ------------------------------------------------------------------------------------------------

function open(i, onSettled) {
  const room = `bench-${Math.floor(i / roomSize)}`;
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 30000 });
  const c = { ws, id: null, welcomed: false, peers: null };
  clients[i] = c;
  let done = false;
  const settle = () => { if (!done) { done = true; onSettled(); } };
  ws.on('open', () => {
    ws.send(JSON.stringify({ type: 'join', room, name: `p${i}` }));
  });
  ws.on('message', (data) => {
    let msg;
    try { msg = JSON.parse(data.toString('utf8')); } catch { return note(`participant ${i}: non-JSON frame`); }
    switch (msg.type) {
      case 'welcome':
        if (c.welcomed) return;
        c.welcomed = true;
        c.id = msg.id;
        counts.welcomes++;
        c.peers = Array.isArray(msg.peers) ? msg.peers.map((p) => p.id) : null;
        return settle();
      case 'signal':
        if (c.expectSignalFrom && msg.from === c.expectSignalFrom) {
          c.expectSignalFrom = null;
          counts.signals_received++;
          c.onSignal?.();
        }
        return;
      case 'error':
        counts.server_errors++;
        note(`participant ${i}: error ${msg.code}: ${msg.message}`);
        if (!c.welcomed) { ws.terminate(); settle(); }
        return;
      default:
        return; // peer-joined, peer-left, pong
    }
  });
  ws.on('error', (e) => {
    if (!c.welcomed) {
      counts.connect_errors++;
      note(`participant ${i}: ${e.code || e.message}`);
    }
  });
  ws.on('close', () => {
    if (c.welcomed && (phase === 'signal' || phase === 'hold')) counts.dropped_while_held++;
    settle();
  });
}

/**
 * Joins in one room race each other, so who is first is not fixed; but in each room the
 * welcomes must list 0, 1, …, k-1 peers, each an earlier member of that same room.
 */
function checkPeerLists() {
  for (let first = 0; first < n; first += roomSize) {
    const members = clients.slice(first, Math.min(first + roomSize, n)).filter((c) => c?.welcomed);
    const ids = new Set(members.map((c) => c.id));
    const lengths = members.map((c) => c.peers?.length ?? -1).sort((a, b) => a - b);
    const wellFormed = lengths.every((len, k) => len === k)
      && members.every((c) => c.peers.every((p) => ids.has(p) && p !== c.id));
    if (!wellFormed) {
      counts.peer_list_mismatches++;
      note(`room bench-${first / roomSize}: welcome peer lists ${JSON.stringify(lengths)}`);
    }
  }
}

function note(message) {
  if (firstErrors.length < 5) firstErrors.push(message);
}

/** VmRSS, VmHWM, RssAnon (KiB) and Threads of the server process. */
function procStatus() {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch (e) {
    fail(`cannot read /proc/${pid}/status (${e.code}): is the server running?`);
  }
  const out = {};
  for (const key of ['VmRSS', 'VmHWM', 'RssAnon', 'Threads']) {
    const m = text.match(new RegExp(`^${key}:\\s+(\\d+)`, 'm'));
    out[key] = m ? Number(m[1]) : null;
  }
  if (out.VmRSS === null) fail(`no VmRSS in /proc/${pid}/status`);
  return out;
}

/** utime + stime of the server process (all threads), in seconds. */
function procCpuSeconds() {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return NaN;
  }
}

/** `deadline` noting a late phase among this run's first errors. */
function withDeadline(seconds, what, promise) {
  return deadline(seconds, what, promise, note);
}
