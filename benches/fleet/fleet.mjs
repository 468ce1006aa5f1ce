#!/usr/bin/env node
// fleet.mjs — the load client of benches/fleet/compare.sh: rooms of participants spread over
// one or more rendez nodes, timed joins, chat and signals at a fixed offered rate, and the
// cost of it all on the server side (CPU of the node processes and of redis-server, Redis
// commands, the nodes' own Redis call counters).
//
// Usage: node fleet.mjs --urls ws://127.0.0.1:P1/ws[,ws://…] --pids PID1[,PID2…]
//                       [--redis-port P --redis-pid PID] [--metrics 127.0.0.1:M1[,…]]
//                       [--rooms 300] [--room-size 6] [--join-rate 300] [--rate 1000]
//                       [--duration 10] [--burst 1000] [--label NAME]
//
// Member k of every room connects to node k mod (number of URLs), so with three nodes each
// room has two participants on each node. Phases, each with a deadline:
//   connect  open every WebSocket (at most 200 handshakes in flight), untimed
//   join     one `join` every 1/join-rate s, in room order; latency = join sent → welcome
//   chat     `chat` at --rate per second for --duration s, rooms and senders in rotation;
//            latency = sent → each of the other room-size − 1 members has it
//   signal   `signal` to one other member, same rate and rotation; latency = sent → received
//   burst    --burst signals sent at once from distinct participants: how fast the path
//            drains a queue (the nodes' Redis task carries out one command at a time)
// Every message carries a sequence number and its send time (performance.now() of this one
// process) in its text or data; latency is the receiving time minus that.
// Server cost per phase: utime+stime (/proc/PID/stat) of every --pids process and of
// --redis-pid; `INFO commandstats` deltas from redis-server (through redis-cli); the sum of
// `rendez_cluster_redis_calls_total` and `rendez_cluster_dropped_total` over the nodes'
// --metrics. Prints one JSON object.
// Loopback addresses only.

import {
  checks, isLoopback, options, round, sleep, withDeadline as deadline,
} from '../signal/args.mjs';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

const args = options(process.argv.slice(2), {
  urls: '',
  pids: '',
  'redis-port': '',
  'redis-pid': '',
  metrics: '',
  rooms: '300',
  'room-size': '6',
  'join-rate': '300',
  rate: '1000',
  duration: '10',
  burst: '1000',
  drain: '2',
  label: '',
}, 'fleet.mjs');
const { fail, intArg, numArg } = checks(args, 'fleet.mjs');

const urls = args.urls.split(',').filter(Boolean).map((u) => new URL(u));
if (urls.length === 0 || urls.length > 16) fail('--urls: one to 16 ws:// URLs');
for (const u of urls) {
  if (u.protocol !== 'ws:' || !isLoopback(u.hostname)) fail(`--urls: ${u.href} is not a loopback ws:// URL`);
}
const metricsAddrs = args.metrics.split(',').filter(Boolean);
for (const a of metricsAddrs) {
  if (!isLoopback(a.replace(/:\d+$/, ''))) fail(`--metrics: ${a} is not a loopback address`);
}
const serverPids = args.pids.split(',').filter(Boolean).map(Number);
if (serverPids.length === 0 || !serverPids.every(Number.isInteger)) fail('--pids: the node processes');
const redisPort = args['redis-port'] ? intArg('redis-port', 1, 65535) : null;
const redisPid = args['redis-pid'] ? intArg('redis-pid', 1, 1 << 30) : null;
const rooms = intArg('rooms', 1, 5000);
const roomSize = intArg('room-size', 2, 16);
const joinRate = numArg('join-rate', 1, 100000);
const rate = numArg('rate', 1, 100000);
const duration = numArg('duration', 0.5, 120);
const drain = numArg('drain', 0.5, 30);
const n = rooms * roomSize;
if (n > 20000) fail('--rooms × --room-size must be at most 20000');
const burst = Math.min(intArg('burst', 0, 20000), n);
const maxMessages = Math.ceil(rate * duration);
if (maxMessages > 1_000_000) fail('--rate × --duration must be at most 1 000 000 messages');

const firstErrors = [];
const counts = { connect_errors: 0, server_errors: 0, closed_early: 0, unexpected: 0 };

/** participant i: {ws, room, member, node, id, peers: Set, joinSent, welcomeAt} */
const people = [];
/** participant id → index */
const byId = new Map();
/** The phase now receiving: {kind, onChat(i, msg, now), onSignal(i, msg, now)} */
let phase = null;
/** True from the end of the connect phase until the client closes: a close then is a drop. */
let holding = false;

// --- connect ------------------------------------------------------------------------------
await waitHealthy();
const tConnect = performance.now();
await withDeadline(60, 'connect', new Promise((resolve) => {
  let next = 0;
  let open = 0;
  let settled = 0;
  const startMore = () => {
    while (open < 200 && next < n) {
      open++;
      connect(next++, () => {
        open--;
        if (++settled === n) resolve();
        else startMore();
      });
    }
  };
  startMore();
}));
const connectSeconds = (performance.now() - tConnect) / 1000;
const connected = people.filter((p) => p?.ws.readyState === WebSocket.OPEN).length;
holding = true;

// --- join -----------------------------------------------------------------------------------
const result = {
  label: args.label || undefined, nodes: urls.length, participants: n, rooms, room_size: roomSize,
  join_rate: joinRate, rate, duration, burst_size: burst, connected,
};
result.connect_seconds = round(connectSeconds, 3);
{
  const before = await snapshot();
  const joinLatencies = [];
  let welcomes = 0;
  let allWelcomed;
  const welcomed = new Promise((resolve) => { allWelcomed = resolve; });
  phase = {
    onWelcome(p, now) {
      joinLatencies.push(now - p.joinSent);
      if (++welcomes === connected) allWelcomed();
    },
  };
  const start = performance.now();
  const sent = await paced(n, joinRate, 60, (i) => {
    const p = people[i];
    if (p?.ws.readyState !== WebSocket.OPEN) return false;
    p.joinSent = performance.now();
    p.ws.send(JSON.stringify({ type: 'join', room: p.room, name: `p${i}` }));
    return true;
  });
  await withDeadline(30, 'welcomes', welcomed);
  const joinSeconds = (performance.now() - start) / 1000;
  // peer-joined for the last members may still be on their way.
  await waitFor(10, () => people.every((p) => !p?.id || p.peers.size === roomSize - 1));
  const after = await snapshot();
  const incomplete = people.filter((p) => p?.id && p.peers.size !== roomSize - 1).length;
  result.join = {
    sent: sent.sent,
    shortfall_ms: round(sent.lateMs, 1),
    welcomes,
    seconds: round(joinSeconds, 3),
    ...percentiles(joinLatencies),
    members_without_full_room: incomplete,
    ...cost(before, after, welcomes),
  };
}

// --- chat and signal at a fixed rate, then a burst of signals --------------------------------
const joined = people.filter((p) => p?.id);
const roomsOf = [];
for (const p of joined) (roomsOf[p.roomIndex] ??= []).push(p);
const fullRooms = roomsOf.filter((r) => r && r.length === roomSize);
if (fullRooms.length === 0) fail('no room was complete after the joins: nothing to measure');

result.chat = await messagePhase('chat', 'chat', rate, maxMessages, duration);
result.signal = await messagePhase('signal', 'signal', rate, maxMessages, duration);
if (burst > 0) result.burst = await messagePhase('burst', 'signal', 0, burst, 0);

// --- close ---------------------------------------------------------------------------------------
phase = null;
holding = false;
await withDeadline(20, 'close', new Promise((resolve) => {
  let open = 0;
  const onClosed = () => { if (--open === 0) resolve(); };
  for (const p of people) {
    if (!p || p.ws.readyState === WebSocket.CLOSED) continue;
    open++;
    p.ws.once('close', onClosed);
    p.ws.close(1000);
  }
  if (open === 0) resolve();
}));
for (const p of people) if (p && p.ws.readyState !== WebSocket.CLOSED) p.ws.terminate();

result.counts = counts;
result.ok = connected === n && result.join.welcomes === n && result.join.members_without_full_room === 0
  && counts.server_errors === 0 && counts.closed_early === 0
  && ['chat', 'signal', 'burst'].every((k) => !result[k] || result[k].lost === 0);
result.first_errors = firstErrors.length ? firstErrors : undefined;
process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));

// ------------------------------------------------------------------------------------------------

/**
 * Sends `count` messages of `kind` ("chat" or "signal") marked with `tag`, at `perSecond`
 * (or all at once when 0), waits for every delivery or `drain` seconds after the last
 * send, and reports latency and server cost.
 */
async function messagePhase(tag, kind, perSecond, count, seconds) {
  const expectedPer = kind === 'chat' ? roomSize - 1 : 1;
  const sentAt = new Float64Array(count);
  const senderNode = new Int8Array(count);
  const seen = new Uint8Array(count); // deliveries of each message so far
  const sameNode = [];
  const otherNode = [];
  let delivered = 0;
  let duplicates = 0;
  let expected = 0;
  let allIn = null;
  let lastAt = 0;
  const record = (seq, sentTime, receiver, now) => {
    if (!(seq >= 0 && seq < count) || sentAt[seq] === 0 || !Number.isFinite(sentTime)) {
      return void counts.unexpected++;
    }
    if (seen[seq] >= expectedPer) return void duplicates++;
    seen[seq]++;
    delivered++;
    lastAt = now;
    (receiver.node === senderNode[seq] ? sameNode : otherNode).push(now - sentTime);
    if (allIn && delivered === expected) allIn();
  };
  phase = {
    onChat(p, msg, now) {
      const [fleet, phaseTag, seq, sentTime] = String(msg.text).split(' ');
      if (fleet !== 'fleet' || phaseTag !== tag) return void counts.unexpected++;
      if (msg.from === p.id) return; // the sender's own copy
      record(Number(seq), Number(sentTime), p, now);
    },
    onSignal(p, msg, now) {
      if (msg.data?.phase !== tag || typeof msg.data.seq !== 'number') return void counts.unexpected++;
      record(msg.data.seq, msg.data.sent, p, now);
    },
  };
  const send = (j) => {
    // Rooms in rotation; within a room the sender moves on every round of rooms.
    const room = fullRooms[j % fullRooms.length];
    const k = Math.floor(j / fullRooms.length) % roomSize;
    const from = room[k];
    if (from.ws.readyState !== WebSocket.OPEN) return false;
    senderNode[j] = from.node;
    sentAt[j] = performance.now();
    if (kind === 'chat') {
      from.ws.send(JSON.stringify({ type: 'chat', text: `fleet ${tag} ${j} ${sentAt[j].toFixed(3)}` }));
    } else {
      const to = room[(k + 1 + (j % (roomSize - 1))) % roomSize];
      from.ws.send(JSON.stringify({ type: 'signal', to: to.id, data: { phase: tag, seq: j, sent: round(sentAt[j], 3) } }));
    }
    expected += expectedPer;
    return true;
  };
  const before = await snapshot();
  const start = performance.now();
  let sent;
  if (perSecond > 0) {
    sent = await paced(count, perSecond, seconds * 2 + 10, send);
  } else {
    let ok = 0;
    for (let j = 0; j < count; j++) if (send(j)) ok++;
    sent = { sent: ok, lateMs: 0 };
  }
  const sentSeconds = (performance.now() - start) / 1000;
  await withDeadline(perSecond > 0 ? drain : drain + 20, `${kind} deliveries`, new Promise((resolve) => {
    allIn = resolve;
    if (delivered === expected) resolve();
  }));
  const wholeSeconds = (performance.now() - start) / 1000;
  const after = await snapshot();
  phase = null;
  const all = sameNode.concat(otherNode);
  const out = {
    kind,
    offered_per_second: perSecond || undefined,
    sent: sent.sent,
    shortfall_ms: round(sent.lateMs, 1),
    send_seconds: round(sentSeconds, 3),
    expected,
    delivered,
    lost: expected - delivered,
    duplicates,
    ...percentiles(all),
  };
  if (urls.length > 1) {
    out.same_node = { deliveries: sameNode.length, ...percentiles(sameNode) };
    out.other_node = { deliveries: otherNode.length, ...percentiles(otherNode) };
  }
  if (perSecond === 0) {
    // From the first send to the last delivery: the rate at which the path drains a queue.
    out.drain_seconds = delivered > 0 ? round((lastAt - start) / 1000, 4) : null;
    out.delivered_per_second = out.drain_seconds > 0 ? Math.round(delivered / out.drain_seconds) : null;
  }
  Object.assign(out, cost(before, after, sent.sent), { window_seconds: round(wholeSeconds, 3) });
  return out;
}

/** Calls `send(i)` for i in 0..count at `perSecond`, catching up after a late timer. */
async function paced(count, perSecond, deadlineSeconds, send) {
  const start = performance.now();
  const limit = start + deadlineSeconds * 1000;
  let i = 0;
  let ok = 0;
  let lateMs = 0;
  while (i < count && performance.now() < limit) {
    const now = performance.now();
    const due = Math.min(count, Math.floor(((now - start) / 1000) * perSecond) + 1);
    // How late the first message of this round goes out: the timer's and the loop's delay.
    if (due > i) lateMs = Math.max(lateMs, now - (start + (i / perSecond) * 1000));
    for (; i < due; i++) if (send(i)) ok++;
    if (i < count) await sleep(Math.max(0, (start + (i / perSecond) * 1000 - performance.now()) / 1000));
  }
  return { sent: ok, lateMs };
}

function connect(i, onSettled) {
  const roomIndex = Math.floor(i / roomSize);
  const member = i % roomSize;
  const node = member % urls.length;
  const ws = new WebSocket(urls[node], { perMessageDeflate: false, handshakeTimeout: 30000 });
  const p = { ws, roomIndex, room: `fleet-${roomIndex}`, node, id: null, peers: new Set(), joinSent: 0 };
  people[i] = p;
  let done = false;
  const settle = () => { if (!done) { done = true; onSettled(); } };
  ws.on('open', settle);
  ws.on('message', (data) => {
    const now = performance.now();
    let msg;
    try { msg = JSON.parse(data.toString('utf8')); } catch { return note(`participant ${i}: non-JSON frame`); }
    switch (msg.type) {
      case 'welcome':
        if (p.id) return;
        p.id = msg.id;
        byId.set(p.id, i);
        for (const peer of msg.peers ?? []) p.peers.add(peer.id);
        return phase?.onWelcome?.(p, now);
      case 'peer-joined':
        p.peers.add(msg.id);
        return;
      case 'peer-left':
        p.peers.delete(msg.id);
        return;
      case 'chat':
        return phase?.onChat?.(p, msg, now);
      case 'signal':
        return phase?.onSignal?.(p, msg, now);
      case 'error':
        counts.server_errors++;
        return note(`participant ${i}: error ${msg.code}: ${msg.message}`);
      default:
        return; // pong
    }
  });
  ws.on('error', (e) => {
    if (ws.readyState !== WebSocket.OPEN) counts.connect_errors++;
    note(`participant ${i}: ${e.code || e.message}`);
    settle();
  });
  ws.on('close', () => {
    if (holding) counts.closed_early++;
    settle();
  });
}

/** Everything the cost of a phase is computed from, read at its start and its end. */
async function snapshot() {
  return {
    at: performance.now(),
    nodesCpu: serverPids.reduce((s, pid) => s + procCpuSeconds(pid), 0),
    redisCpu: redisPid ? procCpuSeconds(redisPid) : 0,
    clientCpu: process.cpuUsage(),
    machineBusy: machineBusySeconds(),
    redis: redisPort ? commandStats() : null,
    redisCalls: await metricSum('rendez_cluster_redis_calls_total'),
    dropped: await metricSum('rendez_cluster_dropped_total'),
  };
}

/** CPU and Redis figures between two snapshots, per event and per 1000 events. */
function cost(before, after, events) {
  const nodes = after.nodesCpu - before.nodesCpu;
  const redis = after.redisCpu - before.redisCpu;
  const client = (after.clientCpu.user + after.clientCpu.system - before.clientCpu.user - before.clientCpu.system) / 1e6;
  const busy = after.machineBusy - before.machineBusy;
  const out = {
    nodes_cpu_seconds: round(nodes, 3),
    redis_cpu_seconds: round(redis, 3),
    client_cpu_seconds: round(client, 3),
    other_cpu_seconds: round(Math.max(0, busy - nodes - redis - client), 3),
    server_cpu_ms_per_1000: events > 0 ? round(((nodes + redis) * 1e6) / events, 1) : null,
  };
  if (before.redis && after.redis) {
    const d = (name) => (after.redis[name] ?? 0) - (before.redis[name] ?? 0);
    const scripts = d('evalsha') + d('eval');
    let all = 0;
    for (const name of Object.keys(after.redis)) if (name !== 'info' && !name.endsWith('_usec')) all += d(name);
    out.redis = {
      evalsha: d('evalsha'),
      eval: d('eval'),
      publish: d('publish'),
      all_commands: all,
      // Redis's own time executing them (a script's time includes its commands'): the rest
      // of its CPU goes to reading requests, writing replies and delivering to subscribers.
      evalsha_usec: d('evalsha_usec') + d('eval_usec'),
      publish_usec: d('publish_usec'),
      round_trips: after.redisCalls - before.redisCalls,
      // Commands the nodes dropped: their queue to the Redis task was full.
      dropped: after.dropped - before.dropped,
      scripts_per_event: ratio(scripts, events),
      publish_per_event: ratio(d('publish'), events),
      commands_per_event: ratio(all, events),
      round_trips_per_event: ratio(after.redisCalls - before.redisCalls, events),
    };
  }
  return out;
}

function ratio(x, events) {
  return events > 0 ? round(x / events, 3) : null;
}

/** `INFO commandstats`: calls and microseconds per command name ("publish", "publish_usec"). */
function commandStats() {
  const text = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(redisPort), 'INFO', 'commandstats'], {
    encoding: 'utf8',
    timeout: 5000,
  });
  const calls = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    calls[m[1]] = Number(m[2]);
    calls[`${m[1]}_usec`] = Number(m[3]);
  }
  return calls;
}

/** The sum of `name` over every node's /metrics. */
async function metricSum(name) {
  return (await Promise.all(metricsAddrs.map((a) => metric(a, name)))).reduce((s, x) => s + x, 0);
}

/** The sum of every sample of `name` on a node's /metrics. */
function metric(addr, name) {
  return new Promise((resolve) => {
    const req = httpGet(`http://${addr}/metrics`, { timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        let sum = 0;
        for (const line of body.split('\n')) {
          if (line.startsWith(name + ' ') || line.startsWith(name + '{')) sum += Number(line.split(' ').pop());
        }
        resolve(sum);
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', (e) => { note(`metrics ${addr}: ${e.message}`); resolve(0); });
  });
}

/** Until every node's /healthz answers 200 (a clustered node: once it reached Redis). */
async function waitHealthy() {
  const deadline = performance.now() + 20000;
  for (const u of urls) {
    for (;;) {
      const status = await new Promise((resolve) => {
        const req = httpGet(`http://${u.host}/healthz`, { timeout: 2000 }, (res) => { res.resume(); resolve(res.statusCode); });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve(0));
      });
      if (status === 200) break;
      if (performance.now() > deadline) fail(`${u.host}/healthz did not answer 200 within 20 s (last: ${status})`);
      await sleep(0.1);
    }
  }
}

function percentiles(xs) {
  if (xs.length === 0) return { p50_ms: null, p99_ms: null, max_ms: null };
  const s = Float64Array.from(xs).sort();
  const at = (q) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { p50_ms: round(at(0.5), 3), p99_ms: round(at(0.99), 3), max_ms: round(s[s.length - 1], 3) };
}

/** utime + stime of a process (all threads), in seconds. */
function procCpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch (e) {
    fail(`cannot read /proc/${pid}/stat (${e.code}): did a server exit?`);
  }
}

/** Busy CPU time of the whole machine (everything but idle and iowait), in seconds. */
function machineBusySeconds() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((s, x) => s + x, 0);
  return (total - f[3] - f[4]) / 100;
}

async function waitFor(seconds, done) {
  const deadline = performance.now() + seconds * 1000;
  while (!done() && performance.now() < deadline) await sleep(0.05);
}

function note(message) {
  if (firstErrors.length < 5) firstErrors.push(message);
}

/** `deadline` noting a late phase among this run's first errors. */
function withDeadline(seconds, what, promise) {
  return deadline(seconds, what, promise, note);
}
