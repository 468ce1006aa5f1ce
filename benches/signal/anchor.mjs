#!/usr/bin/env node
// anchor.mjs — a minimal Node.js `ws` room server speaking rendez's signaling protocol subset,
// the side-by-side anchor for benches/signal/compare.sh.
//
// What a typical small Node signaling server does, and no more:
//   join   → `welcome` {id, peers, iceServers} to the joiner, `peer-joined` to the others
//   signal → relayed as {"type":"signal","from":ID,"data":…} to `to` in the same room only
//   leave / close → `peer-left` to the rest of the room
//   ping   → pong
// with the same limits rendez applies by default where they cost nothing to copy: room size
// (room-full), 1–64 character room and name, a frame size cap, one room per connection, and a
// heartbeat (one interval for all sockets, as in the `ws` README) that closes dead peers.
// When --secret is given, each welcome carries TURN REST credentials minted like rendez's
// (HMAC-SHA1 over "EXPIRY:NAME"), so both servers send welcomes of the same shape and size.
//
// Usage: node anchor.mjs [--port 18081] [--host 127.0.0.1] [--room-size 6]
//                        [--secret S] [--turn-port 3478] [--credential-ttl 86400]
// Listens on loopback only. Prints "listening HOST:PORT" on stdout once bound.

import { checks, isLoopback, options } from './args.mjs';
import { createHmac, randomBytes } from 'node:crypto';
import { WebSocketServer } from 'ws';

const args = options(process.argv.slice(2), {
  port: '18081',
  host: '127.0.0.1',
  'room-size': '6',
  secret: '',
  'turn-port': '3478',
  'credential-ttl': '86400',
  'max-message-bytes': '65536',
  'idle-timeout': '60',
}, 'anchor.mjs');
const { fail, intArg } = checks(args, 'anchor.mjs');
const host = args.host;
if (!isLoopback(host)) {
  fail(`refusing to listen on ${host}: loopback only (127.0.0.0/8 or ::1)`);
}
const port = intArg('port', 0, 65535);
const roomSize = intArg('room-size', 1, 16);
const turnPort = intArg('turn-port', 1, 65535);
const credentialTtl = intArg('credential-ttl', 1, 365 * 86400);
const maxMessageBytes = intArg('max-message-bytes', 1024, 16 << 20);
const idleTimeout = intArg('idle-timeout', 2, 86400);
const secret = args.secret;

/** room name → Map(id → {ws, name}) */
const rooms = new Map();

const wss = new WebSocketServer({
  host,
  port,
  path: '/ws',
  // Like rendez: frames a little over the message cap reach the handler, far larger close.
  maxPayload: maxMessageBytes * 2,
});

wss.on('listening', () => {
  const a = wss.address();
  console.log(`listening ${a.address}:${a.port}`);
});
wss.on('error', (e) => fail(`server error: ${e.message}`));

wss.on('connection', (ws, req) => {
  ws.isAlive = true;
  ws.member = null; // {id, name, room}
  ws.host = requestHost(req.headers.host);
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data, isBinary) => {
    ws.isAlive = true;
    if (isBinary) return send(ws, error('bad-message', 'binary frames are not supported'));
    if (data.length > maxMessageBytes) return send(ws, error('bad-message', 'message too large'));
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      return send(ws, error('bad-message', 'not a valid signaling message'));
    }
    switch (msg && msg.type) {
      case 'join': return join(ws, msg);
      case 'signal': return relay(ws, msg);
      case 'leave': return leave(ws);
      case 'ping': return send(ws, { type: 'pong' });
      default: return send(ws, error('bad-message', 'not a valid signaling message'));
    }
  });
  ws.on('close', () => leave(ws));
  ws.on('error', () => {});
});

// One heartbeat for every socket, every idle-timeout/2 (rendez pings at the same period).
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, (idleTimeout * 1000) / 2);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    clearInterval(heartbeat);
    for (const ws of wss.clients) ws.terminate();
    wss.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}

function join(ws, msg) {
  if (typeof msg.room !== 'string' || typeof msg.name !== 'string') {
    return send(ws, error('bad-message', 'not a valid signaling message'));
  }
  const room = msg.room.trim();
  const name = msg.name.trim();
  if (!validName(room) || !validName(name)) {
    return send(ws, error('bad-message', 'room and name must be 1 to 64 printable characters'));
  }
  if (ws.member) return send(ws, error('bad-message', 'already in a room; leave first'));
  let members = rooms.get(room);
  if (members && members.size >= roomSize) return send(ws, error('room-full', 'this room is full'));
  if (!members) {
    members = new Map();
    rooms.set(room, members);
  }
  const id = randomBytes(8).toString('hex');
  const peers = [];
  for (const [peerId, peer] of members) peers.push({ id: peerId, name: peer.name });
  send(ws, { type: 'welcome', id, peers, iceServers: iceServers(ws.host, id) });
  const joined = JSON.stringify({ type: 'peer-joined', id, name });
  for (const peer of members.values()) peer.ws.send(joined);
  members.set(id, { ws, name });
  ws.member = { id, name, room };
}

function relay(ws, msg) {
  if (!ws.member) return send(ws, error('bad-message', 'join a room first'));
  const target = typeof msg.to === 'string' && msg.to !== ws.member.id
    ? rooms.get(ws.member.room)?.get(msg.to)
    : undefined;
  if (!target) return send(ws, error('unknown-peer', 'no such participant in your room'));
  send(target.ws, { type: 'signal', from: ws.member.id, data: msg.data ?? null });
}

function leave(ws) {
  const member = ws.member;
  if (!member) return;
  ws.member = null;
  const members = rooms.get(member.room);
  if (!members) return;
  members.delete(member.id);
  if (members.size === 0) {
    rooms.delete(member.room);
    return;
  }
  const left = JSON.stringify({ type: 'peer-left', id: member.id });
  for (const peer of members.values()) peer.ws.send(left);
}

/** STUN for everyone; TURN with credentials minted for this participant when a secret is set. */
function iceServers(hostName, who) {
  const servers = [{ urls: [`stun:${hostName}:${turnPort}`] }];
  if (secret) {
    const username = `${Math.floor(Date.now() / 1000) + credentialTtl}:web-${who}`;
    const credential = createHmac('sha1', secret).update(username).digest('base64');
    servers.push({
      urls: [`turn:${hostName}:${turnPort}?transport=udp`, `turn:${hostName}:${turnPort}?transport=tcp`],
      username,
      credential,
    });
  }
  return servers;
}

function send(ws, message) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(message));
}

function error(code, message) {
  return { type: 'error', code, message };
}

function validName(s) {
  // 1 to 64 characters (code points), no control characters.
  const chars = [...s];
  return chars.length >= 1 && chars.length <= 64 && !/\p{Cc}/u.test(s);
}

/** The Host header without its port, reduced to host-name characters (as rendez does). */
function requestHost(value) {
  const h = value || 'localhost';
  const bare = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : h.split(':')[0];
  return /^[A-Za-z0-9.\-:[\]]+$/.test(bare) ? bare : 'localhost';
}
