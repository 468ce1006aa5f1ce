// One relayed WebRTC call in headless Debian Chromium, for tests/browser.rs.
//
//   node relay_call.mjs '<json>'
//
// Runs inside the network namespace that the Rust test made (`ip netns exec`), so every
// address it can reach is the test's own. It:
//   1. waits (bounded) until the TURN server answers on the transport under test;
//   2. serves one page from 127.0.0.1 (a secure context, so getUserMedia works);
//   3. launches /usr/bin/chromium through playwright-core (never a downloaded browser);
//   4. in that page, connects two RTCPeerConnections with iceTransportPolicy "relay" and
//      the TURN server as their only ICE server, sends a data-channel message each way and
//      the fake camera's video one way, then reads getStats();
//   5. prints exactly one line of JSON on stdout: {"ok": true, ...} or {"ok": false, ...}.
// The Rust test makes the assertions; this script only reports what the browser saw.
//
// Arguments (one JSON object):
//   iceServer       RTCIceServer {urls, username, credential}
//   probe           {transport: "udp"|"tcp", host, port}: where the server must answer first
//   chromium        path of the browser executable
//   chromiumArgs    extra command-line flags (the Rust test owns the list)
//   userDataDir     a fresh, empty profile directory
//   home            HOME for Chromium (where its NSS database lives)
//   screenshot      optional PNG path, taken once remote video is playing
//   timeoutMs       budget for the whole script

import { chromium } from "playwright-core";
import dgram from "node:dgram";
import http from "node:http";
import { tcpConnect, waitForServer } from "./net_probe.mjs";
import crypto from "node:crypto";

const args = JSON.parse(process.argv[2] ?? "{}");
const started = Date.now();
const deadline = started + (args.timeoutMs ?? 45000);
const remaining = () => Math.max(0, deadline - Date.now());
const phases = {};
const mark = (name) => (phases[name] = Date.now() - started);

let browser = null;
let server = null;
let finished = false;

function finish(result, code) {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify({ ...result, phases }) + "\n");
  const close = browser ? browser.close().catch(() => {}) : Promise.resolve();
  close.finally(() => {
    if (server) server.close();
    process.exit(code);
  });
  // Closing must not hang either.
  setTimeout(() => process.exit(code), 5000).unref();
}

// A hard stop for the whole script, whatever is pending.
setTimeout(() => finish({ ok: false, error: `relay_call.mjs timed out after ${args.timeoutMs} ms` }, 2), remaining()).unref();
process.on("SIGTERM", () => finish({ ok: false, error: "terminated (SIGTERM)" }, 3));
process.on("uncaughtException", (e) => finish({ ok: false, error: "uncaught: " + String(e?.stack ?? e) }, 1));
process.on("unhandledRejection", (e) => finish({ ok: false, error: "unhandled: " + String(e?.stack ?? e) }, 1));

// ---------------------------------------------------------------------------------------

/** Resolves when the server answers a STUN Binding request over UDP. */
function stunBindingUdp(host, port, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    const tid = crypto.randomBytes(12);
    // RFC 8489 §5: type 0x0001 Binding request, length 0, magic cookie, transaction ID.
    const request = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), tid]);
    const timer = setTimeout(() => done(new Error("no STUN answer")), timeoutMs);
    function done(error) {
      clearTimeout(timer);
      socket.close();
      error ? reject(error) : resolve();
    }
    socket.on("error", done);
    socket.on("message", (msg) => {
      if (msg.length >= 20 && msg.readUInt16BE(0) === 0x0101 && msg.subarray(8, 20).equals(tid)) done();
    });
    socket.send(request, port, host);
  });
}

function servePage() {
  return new Promise((resolve, reject) => {
    const s = http.createServer((req, res) => {
      if (req.url !== "/") {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    });
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => resolve(s));
  });
}

// The page. `relayCall` runs entirely in the browser and returns plain data.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>rendez relay call</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px sans-serif; margin: 8px; }
  figure { display: inline-block; margin: 0 8px 0 0; }
  video { width: 320px; height: 240px; background: #222; display: block; }
</style>
<figure><video id="local" autoplay muted playsinline></video><figcaption>a: fake camera</figcaption></figure>
<figure><video id="remote" autoplay muted playsinline></video><figcaption>b: received through rendez</figcaption></figure>
<div id="status">starting</div>
<script>
window.relayCall = async function (iceServer, budgetMs) {
  const deadline = Date.now() + budgetMs;
  const status = (text) => (document.getElementById("status").textContent = text);
  const errors = [];
  const candidates = { a: [], b: [] };
  const states = { a: [], b: [] };
  const withDeadline = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error("timed out waiting for " + what)), Math.max(0, deadline - Date.now()))),
    ]);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  let a, b;
  const report = async (extra) => ({
    ...extra,
    candidates,
    states,
    errors,
    a: a ? await selectedPair(a) : null,
    b: b ? await selectedPair(b) : null,
    video: b ? await inboundVideo(b) : null,
  });

  try {
    const stream = await withDeadline(
      navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false }),
      "getUserMedia");
    document.getElementById("local").srcObject = stream;

    const config = { iceServers: [iceServer], iceTransportPolicy: "relay" };
    a = new RTCPeerConnection(config);
    b = new RTCPeerConnection(config);

    // Without a relay candidate ICE cannot succeed: fail at once instead of at the deadline.
    let noCandidate;
    const gatheringFailed = new Promise((_, reject) => {
      noCandidate = (name) => reject(new Error("peer " + name + " finished ICE gathering without a relay candidate"));
    });
    gatheringFailed.catch(() => {});

    // Candidates are handed over only once both descriptions are set.
    let signalled = false;
    const pending = [];
    for (const [name, pc, other] of [["a", a, () => b], ["b", b, () => a]]) {
      pc.onicecandidate = (e) => {
        if (!e.candidate || !e.candidate.candidate) return;
        candidates[name].push(e.candidate.candidate);
        const add = () => other().addIceCandidate(e.candidate).catch((err) => errors.push(name + " addIceCandidate: " + err));
        signalled ? add() : pending.push(add);
      };
      pc.onicecandidateerror = (e) =>
        errors.push({ pc: name, url: e.url, errorCode: e.errorCode, errorText: e.errorText, address: e.address, port: e.port });
      pc.onconnectionstatechange = () => states[name].push("connection:" + pc.connectionState);
      pc.oniceconnectionstatechange = () => states[name].push("ice:" + pc.iceConnectionState);
      pc.onicegatheringstatechange = () => {
        states[name].push("gathering:" + pc.iceGatheringState);
        // Once both have finished (so both have reported their errors), one without a
        // candidate means the call cannot connect.
        if (a.iceGatheringState === "complete" && b.iceGatheringState === "complete") {
          for (const side of ["a", "b"]) if (candidates[side].length === 0) noCandidate(side);
        }
      };
    }

    for (const track of stream.getTracks()) a.addTrack(track, stream);
    const remoteTrack = new Promise((resolve) => (b.ontrack = (e) => resolve(e.streams[0] ?? new MediaStream([e.track]))));

    const dcA = a.createDataChannel("rendez");
    const dcAOpen = new Promise((resolve) => (dcA.onopen = resolve));
    const atA = new Promise((resolve) => (dcA.onmessage = (m) => resolve(m.data)));
    const atB = new Promise((resolve) => {
      b.ondatachannel = (e) => {
        e.channel.onmessage = (m) => {
          resolve(m.data);
          e.channel.send("pong from b through rendez");
        };
      };
    });

    status("negotiating");
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    signalled = true;
    pending.splice(0).forEach((add) => add());

    await withDeadline(Promise.race([dcAOpen, gatheringFailed]), "the data channel to open (ICE through the relay)");
    status("data channel open");
    dcA.send("ping from a through rendez");
    const messageAtB = await withDeadline(atB, "the message at b");
    const messageAtA = await withDeadline(atA, "the reply at a");

    const remote = document.getElementById("remote");
    remote.srcObject = await withDeadline(remoteTrack, "the remote track");
    await remote.play().catch(() => {});

    // Wait for decoded frames (and a few of them, so the screenshot shows real video).
    let video = await inboundVideo(b);
    while (Date.now() < deadline && !(video && video.framesDecoded >= 15 && remote.videoWidth > 0)) {
      await sleep(200);
      video = await inboundVideo(b);
    }
    status("video: " + (video ? video.framesDecoded : 0) + " frames decoded via " + JSON.stringify(iceServer.urls));
    return await report({ ok: true, messageAtB, messageAtA, remoteVideoWidth: remote.videoWidth });
  } catch (error) {
    status("failed: " + error);
    return await report({ ok: false, error: String(error) });
  }

  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) return { selected: null };
    const candidate = (id) => {
      const c = stats.get(id);
      return c && {
        candidateType: c.candidateType,
        protocol: c.protocol,
        relayProtocol: c.relayProtocol,
        address: c.address,
        port: c.port,
        url: c.url,
      };
    };
    return {
      selected: {
        state: pair.state,
        nominated: pair.nominated,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        local: candidate(pair.localCandidateId),
        remote: candidate(pair.remoteCandidateId),
      },
    };
  }

  async function inboundVideo(pc) {
    const stats = await pc.getStats();
    let video = null;
    stats.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        video = {
          framesDecoded: s.framesDecoded ?? 0,
          framesReceived: s.framesReceived ?? 0,
          frameWidth: s.frameWidth,
          frameHeight: s.frameHeight,
          bytesReceived: s.bytesReceived,
          packetsReceived: s.packetsReceived,
        };
      }
    });
    return video;
  }
};
</script>
`;

// Last, so that everything above (PAGE included) is initialised when it runs.
async function main() {
  try {
    const { host, port, transport } = args.probe;
    const probe = transport === "udp" ? () => stunBindingUdp(host, port, 300) : () => tcpConnect(host, port, 300);
    await waitForServer(probe, `${host}:${port}/${transport}`, deadline);
    mark("server_ready");
    server = await servePage();
    const pageUrl = `http://127.0.0.1:${server.address().port}/`;

    const context = await chromium.launchPersistentContext(args.userDataDir, {
      executablePath: args.chromium,
      headless: true,
      args: args.chromiumArgs,
      env: { ...process.env, HOME: args.home },
      timeout: Math.min(30000, remaining()),
      viewport: { width: 680, height: 310 },
    });
    browser = context;
    mark("browser_started");
    const page = context.pages()[0] ?? (await context.newPage());
    const consoleLines = [];
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    await page.goto(pageUrl, { timeout: Math.min(10000, remaining()) });

    const result = await page.evaluate(
      ([iceServer, budget]) => window.relayCall(iceServer, budget),
      [args.iceServer, Math.max(1000, remaining() - 5000)],
    );
    mark("call_done");
    if (args.screenshot && result.ok) {
      await page.screenshot({ path: args.screenshot, timeout: Math.min(10000, remaining()) });
      mark("screenshot");
    }
    finish({ ...result, console: consoleLines }, 0);
  } catch (error) {
    finish({ ok: false, error: String(error?.stack ?? error) }, 1);
  }
}

main();
