// The meeting features of rendez's call page in headless Debian Chromium, for
// tests/browser.rs (`browser_meeting_six`, `browser_meeting_tools`).
//
//   node meeting.mjs '<json>'
//
// Runs inside the test's network namespace, like call_page.mjs: one browser, one tab per
// participant, fake camera, microphone and screen. Every page records, from before its own
// script runs, each RTCPeerConnection and signaling socket it makes, so that what is
// measured here (bitrates, decoded frames, encodings) comes from the browser's own
// getStats() and getParameters(), not from what the page says about itself.
//
// Scenario "six" (six participants): each joins in turn, muted; once every tab shows the five
// others connected with decoded video, and after the re-balance, every tab's total outgoing
// video bitrate is measured over `measureMs` (getStats outbound-rtp, summed over its peer
// connections) together with the frames each tab decodes from every peer and the audio it
// sends (none: muted); then five send a
// chat message (one each, with markup in it) while the first keeps its panel collapsed,
// the first types one and presses Enter, and a too-long one is refused; last, a screenshot
// of the first tab with its chat open.
//
// Scenario "tools" (two participants): the first opens the page, presses "Check camera and
// microphone" and the pre-join view is screenshot; the second joins with its microphone and
// camera off (and is told it is muted when its fake microphone beeps), then turns the camera
// on; then the first shares its
// screen and stops, switches its camera (replaceTrack), and has its signaling socket
// closed; last, the second tab is made phone-sized and screenshot.
//
// Scenario "entry" (a room that needs a token): the invite link carries the token, a page
// without one is told it is not let in, a link whose first candidates were lost comes up
// after an ICE restart, a chosen speaker plays every incoming tile, a browser that refuses
// camera and microphone says so and still shows the others, and a page whose server went
// away after it loaded says the server cannot be reached (the test kills the server when
// the script prints {"event": "page-loaded"}).
//
// Prints exactly one line of JSON (script.mjs): {"ok": true|false, "error"?, "seen", "pages",
// "phases"}. The Rust test makes the assertions.
//
// Arguments (one JSON object): scenario, pageUrl, probe {host, port}, room, participants,
// chromium, chromiumArgs, userDataDir, home, viewport, measureMs, upstreamKbps,
// screenshots {name: path}, timeoutMs; "entry" also token, loseCandidatesMs,
// deniedUserDataDir and deniedChromiumArgs.

import { tcpConnect } from "./net_probe.mjs";
import { ScenarioError, sleep, startScript } from "./script.mjs";
// The page's own rule for the caps, so that the test knows what a re-balance leads to.
import { videoEncodings } from "../../web/bandwidth.js";

const script = startScript("meeting.mjs", 120000, describe);
const { args, seen, tabs, stepTimeout, remaining, mark } = script;

// ---------------------------------------------------------------------------------------
// In the pages

/** Runs in every page before its own script: keeps its peer connections and sockets. */
function recordConnections() {
  const peerConnections = [];
  const sockets = [];
  // Chat frames as they came off the sockets, before the page's own handling.
  const chatFrames = [];
  // What went out as chat, and the server's errors: where a lost message was lost.
  const chatSent = [];
  const errors = [];
  // When each peer-left frame came, and each encoding change took effect (page clock):
  // how long a re-balance took, measured where it happens rather than by polling a
  // loaded browser from outside.
  const peerLeftAt = [];
  const encodingsSet = [];
  // When each chat frame went out and came in (page clock, ms, and the start of its text):
  // where a slow message spent its time.
  const chatLog = [];
  window.__recorded = { peerConnections, sockets, chatFrames, chatSent, chatLog, errors, peerLeftAt, encodingsSet };
  const nativeSetParameters = window.RTCRtpSender.prototype.setParameters;
  window.RTCRtpSender.prototype.setParameters = async function (parameters, ...rest) {
    const result = await nativeSetParameters.call(this, parameters, ...rest);
    encodingsSet.push({ sender: this, maxBitrate: parameters.encodings?.[0]?.maxBitrate, at: performance.now() });
    return result;
  };
  const nativeSend = window.WebSocket.prototype.send;
  window.WebSocket.prototype.send = function (data) {
    if (typeof data === "string" && data.startsWith('{"type":"chat"')) {
      chatSent.push(data.length);
      chatLog.push(["out", Math.round(performance.now()), data.slice(0, 40)]);
    }
    return nativeSend.call(this, data);
  };
  const NativePeerConnection = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...a) {
      super(...a);
      peerConnections.push(this);
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...a) {
      super(...a);
      sockets.push(this);
      this.addEventListener("message", ({ data }) => {
        if (typeof data === "string" && data.startsWith('{"type":"chat"')) {
          chatFrames.push(data);
          chatLog.push(["in", Math.round(performance.now()), data.slice(0, 90)]);
        }
        if (typeof data === "string" && data.startsWith('{"type":"error"')) errors.push(data);
        if (typeof data === "string" && data.startsWith('{"type":"peer-left"')) peerLeftAt.push(performance.now());
      });
    }
  };
}

/**
 * Runs in a page before its script: for the first `ms` after the page loads, every ICE
 * candidate it sends or receives is lost on the way, in signals and inside descriptions, as
 * when a signaling path loses messages. Its links then stay "connecting": only the page's
 * own restart can bring them up. Counts what it dropped in `window.__candidatesDropped`.
 */
function loseCandidates(ms) {
  const until = performance.now() + ms;
  window.__candidatesDropped = 0;
  // A signal frame without its candidates, or null when nothing is left of it.
  const filter = (text) => {
    if (performance.now() > until || typeof text !== "string" || !text.startsWith('{"type":"signal"')) return text;
    const message = JSON.parse(text);
    if (message.data?.candidate !== undefined) {
      window.__candidatesDropped += 1;
      return null;
    }
    const description = message.data?.description;
    if (description?.sdp) {
      const lines = description.sdp.split("\r\n");
      const kept = lines.filter((line) => !line.startsWith("a=candidate") && !line.startsWith("a=end-of-candidates"));
      window.__candidatesDropped += lines.length - kept.length;
      description.sdp = kept.join("\r\n");
      return JSON.stringify(message);
    }
    return text;
  };
  const nativeSend = window.WebSocket.prototype.send;
  window.WebSocket.prototype.send = function (data) {
    const kept = filter(data);
    if (kept !== null) nativeSend.call(this, kept);
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...a) {
      super(...a);
      // Registered before the page's own handlers, so it runs first and can stop them.
      this.addEventListener("message", (event) => {
        // What this listener dispatched itself (untrusted) is already filtered.
        if (!event.isTrusted) return;
        const kept = filter(event.data);
        if (kept === event.data) return;
        event.stopImmediatePropagation();
        if (kept !== null) this.dispatchEvent(new MessageEvent("message", { data: kept }));
      });
    }
  };
}

/**
 * Runs in a page: per open peer connection, video bytes sent, frames decoded, and the
 * maxBitrate of each video sender (bit/s), from the browser itself.
 */
async function mediaCounters() {
  const open = window.__recorded.peerConnections.filter((pc) => pc.connectionState !== "closed");
  return Promise.all(
    open.map(async (pc) => {
      let videoBytesSent = 0;
      let audioBytesSent = 0;
      let framesDecoded = 0;
      // What the bytes were (for a failure's message): resent, key frames asked for and sent,
      // the encoder's own target.
      const sending = { retransmittedBytes: 0, nacks: 0, plis: 0, keyFrames: 0, targetBitrate: 0 };
      // When the browser took these figures (its stats clock, ms), which is what the bytes
      // sent belong to: a loaded page answers getStats() late.
      let statsAt = null;
      for (const s of (await pc.getStats()).values()) {
        if (s.type === "outbound-rtp" && s.kind === "video") {
          videoBytesSent += s.bytesSent ?? 0;
          sending.retransmittedBytes += s.retransmittedBytesSent ?? 0;
          sending.nacks += s.nackCount ?? 0;
          sending.plis += s.pliCount ?? 0;
          sending.keyFrames += s.keyFramesEncoded ?? 0;
          sending.targetBitrate += s.targetBitrate ?? 0;
          statsAt = s.timestamp;
        }
        if (s.type === "outbound-rtp" && s.kind === "audio") audioBytesSent += s.bytesSent ?? 0;
        if (s.type === "inbound-rtp" && s.kind === "video") framesDecoded += s.framesDecoded ?? 0;
      }
      const caps = pc
        .getSenders()
        .filter((sender) => sender.track?.kind === "video")
        .map((sender) => sender.getParameters().encodings?.[0] ?? null);
      // Whether each microphone sender encodes (a muted one must not).
      const audioActive = pc
        .getSenders()
        .filter((sender) => sender.track?.kind === "audio")
        .map((sender) => sender.getParameters().encodings?.[0]?.active ?? null);
      return {
        connectionState: pc.connectionState,
        videoBytesSent,
        audioBytesSent,
        audioActive,
        framesDecoded,
        caps,
        sending,
        statsAt,
        at: performance.now(),
      };
    }),
  );
}

// ---------------------------------------------------------------------------------------
// Tabs

/** Opens the page for `name`; `init`: [function, argument] to run in it before its script. */
async function openTab(name, { token = args.token, browser = script.context, init = null } = {}) {
  const url = new URL(args.pageUrl);
  url.searchParams.set("room", args.room);
  url.searchParams.set("name", name);
  if (token) url.searchParams.set("token", token);
  const tab = await script.newTab(name, url, browser);
  if (init) await tab.page.addInitScript(...init);
  await tab.page.goto(url.href, { timeout: stepTimeout(30000) });
  return tab;
}

async function join(tab) {
  await tab.page.click("#join", { timeout: stepTimeout(30000) });
  await tab.page.waitForFunction(() => window.rendez?.state().joined === true, null, {
    timeout: stepTimeout(20000),
    polling: 100,
  });
}

const state = (tab) => tab.page.evaluate(() => window.rendez.state());

/** Polls until `check(states)` holds; throws `error` if it never did in time. */
async function waitForStates(check, error, ms = 60000) {
  const until = Date.now() + Math.min(ms, remaining());
  while (Date.now() < until) {
    const states = await Promise.all(tabs.map(state));
    if (check(states)) return states;
    await sleep(250);
  }
  throw new ScenarioError(error);
}

function callIsUp(states) {
  const others = tabs.length - 1;
  return states.every(
    (s) =>
      s.joined &&
      s.peers.length === others &&
      s.peers.every((p) => p.connectionState === "connected" && p.framesDecoded > 0),
  );
}

async function describe(tab) {
  const shown = await tab.page.evaluate(() => ({
    state: window.rendez?.state() ?? null,
    bodyError: document.body.dataset.error ?? null,
    message: document.getElementById("message").textContent,
    chatFrames: window.__recorded.chatFrames.length,
    chatSent: window.__recorded.chatSent,
    chatLog: window.__recorded.chatLog,
    errors: window.__recorded.errors,
    sockets: window.__recorded.sockets.length,
    // Bytes a socket was given but has not sent yet: a message stuck in the browser.
    socketsBuffered: window.__recorded.sockets.map((s) => [s.readyState, s.bufferedAmount]),
    chatShown: [...document.querySelectorAll("#chat-log .chat-name")].map((e) => e.textContent),
    chatError: document.getElementById("chat-error").textContent,
    tiles: [...document.querySelectorAll("#grid .tile")].map((tile) => ({
      name: tile.querySelector(".name").textContent,
      screen: tile.classList.contains("screen"),
      pinned: tile.classList.contains("pinned"),
      videoWidth: tile.querySelector("video").videoWidth,
      quality: tile.querySelector(".quality").getAttribute("aria-label"),
    })),
  }));
  return { name: tab.name, ...shown, console: tab.console.slice(-20) };
}

// ---------------------------------------------------------------------------------------
// Scenario "six"

/** Runs in a page: what its chat log shows, and whether markup became elements. */
function chatView() {
  const log = document.getElementById("chat-log");
  return {
    panelHidden: document.getElementById("chat-panel").hidden,
    badge: document.getElementById("chat-badge").textContent,
    toggleLabel: document.getElementById("chat-toggle").getAttribute("aria-label"),
    messages: [...log.children].map((li) => ({
      name: li.querySelector(".chat-name").textContent,
      time: li.querySelector("time").textContent,
      text: li.querySelector(".chat-text").textContent,
    })),
    elementsInTexts: log.querySelectorAll(".chat-text *").length,
  };
}

const chatText = (name) => `hello from ${name} <b>not bold</b> & <img src=x onerror=alert(1)>`;

/** Opens the chat panel, types `text` and presses Enter, as a person would. */
async function typeChat(tab, text) {
  await tab.page.click("#chat-toggle", { timeout: stepTimeout(30000) });
  await tab.page.fill("#chat-text", text, { timeout: stepTimeout(30000) });
  await tab.page.press("#chat-text", "Enter", { timeout: stepTimeout(30000) });
}

/**
 * The same through the page's own controls from script: opens the panel and submits the
 * form. Six tabs of video load two cores so that each input event sent to a background tab
 * can take many seconds; this is for the five who are not watched.
 */
function submitChat(tab, text) {
  return tab.page.evaluate((t) => {
    if (document.getElementById("chat-panel").hidden) document.getElementById("chat-toggle").click();
    document.getElementById("chat-text").value = t;
    document.getElementById("chat-form").requestSubmit();
  }, text);
}

async function waitForChat(tab, count) {
  await tab.page.waitForFunction((n) => document.getElementById("chat-log").children.length >= n, count, {
    timeout: stepTimeout(30000),
    polling: 250,
  });
}

async function measureMedia() {
  // The caps follow the fifth peer within a stats round; then let the encoders settle.
  await sleep(args.settleMs ?? 4000);
  const before = await Promise.all(tabs.map((tab) => tab.page.evaluate(mediaCounters)));
  await sleep(args.measureMs ?? 5000);
  const after = await Promise.all(tabs.map((tab) => tab.page.evaluate(mediaCounters)));
  return tabs.map((tab, i) => ({ name: tab.name, before: before[i], after: after[i] }));
}

/** Runs in a page: whether every video sender of its open connections has the cap `wanted`. */
function rebalancedTo(wanted) {
  return window.__recorded.peerConnections
    .filter((pc) => pc.connectionState === "connected")
    .flatMap((pc) => pc.getSenders())
    .filter((sender) => sender.track?.kind === "video")
    .every((sender) => sender.getParameters().encodings?.[0]?.maxBitrate === wanted);
}

/**
 * Runs in a page: milliseconds from the last peer-left frame until every video sender of its
 * open connections had taken the cap `wanted`, or null if one never did.
 */
function rebalanceTime(wanted) {
  const { peerConnections, peerLeftAt, encodingsSet } = window.__recorded;
  const left = peerLeftAt.at(-1);
  const senders = peerConnections
    .filter((pc) => pc.connectionState === "connected")
    .flatMap((pc) => pc.getSenders())
    .filter((sender) => sender.track?.kind === "video");
  let last = left;
  for (const sender of senders) {
    const set = encodingsSet.find((e) => e.sender === sender && e.at >= left && e.maxBitrate === wanted);
    if (!set) return null;
    last = Math.max(last, set.at);
  }
  return left === undefined ? null : Math.round(last - left);
}

async function sixScenario() {
  for (const name of args.participants) {
    const tab = await openTab(name);
    // Everyone joins muted (see browser_meeting_six): their microphones stay open for the
    // "you are muted" hint, but nothing of them is encoded or sent.
    await tab.page.check("#start-muted", { timeout: stepTimeout(30000) });
    await join(tab);
  }
  mark("all_joined");
  await waitForStates(callIsUp, "not every tab showed the five others connected with decoded video", 100000);
  mark("call_up");
  seen.media = await measureMedia();
  mark("measured");

  // The first tab's panel stays collapsed while the five others write.
  const [first, ...others] = tabs;
  for (const tab of others) await submitChat(tab, chatText(tab.name));
  await waitForChat(first, others.length);
  seen.collapsed = await first.page.evaluate(chatView);
  mark("others_chatted");
  await typeChat(first, chatText(first.name));
  for (const tab of tabs) await waitForChat(tab, tabs.length);
  seen.chats = await Promise.all(tabs.map((tab) => tab.page.evaluate(chatView)));
  mark("all_chatted");
  // Too long for the server: refused with a message beside the form, and nothing broadcast.
  await submitChat(first, "x".repeat(5000));
  await first.page.waitForSelector("#chat-error:not([hidden])", { timeout: stepTimeout(30000) });
  seen.chatError = await first.page.evaluate(() => document.getElementById("chat-error").textContent);
  // Long enough for a wrongly broadcast message to have arrived.
  await sleep(1000);
  seen.finalChats = await Promise.all(tabs.map((tab) => tab.page.evaluate(() => document.getElementById("chat-log").children.length)));
  mark("refused");

  if (args.screenshots?.six) {
    await first.page.screenshot({ path: args.screenshots.six, timeout: stepTimeout(30000) });
    mark("screenshot");
  }

  // Someone leaves: every sender splits the budget among four peers instead. How long that
  // took is read off each page's own clock (from the peer-left frame to the last of its video
  // senders taking the new cap); the test asserts it.
  const leaving = tabs.at(-1);
  await leaving.page.click("#leave", { timeout: stepTimeout(30000) });
  const perFour = videoEncodings(args.upstreamKbps, 4, false).camera.maxBitrate;
  for (const tab of tabs.slice(0, -1)) {
    await tab.page.waitForFunction(rebalancedTo, perFour, { timeout: stepTimeout(30000), polling: 250 });
  }
  seen.rebalancedMs = await Promise.all(tabs.slice(0, -1).map((tab) => tab.page.evaluate(rebalanceTime, perFour)));
  mark("rebalanced");
  return { ok: true };
}

// ---------------------------------------------------------------------------------------
// Scenario "tools"

/** Audio packets `tab` received from its (only) peer over `ms`, from its getStats(). */
async function audioFromPeer(tab, ms) {
  const count = () =>
    tab.page.evaluate(async () => {
      let packets = 0;
      for (const pc of window.__recorded.peerConnections.filter((p) => p.connectionState === "connected")) {
        for (const s of (await pc.getStats()).values()) {
          if (s.type === "inbound-rtp" && s.kind === "audio") packets += s.packetsReceived ?? 0;
        }
      }
      return packets;
    });
  const before = await count();
  await sleep(ms);
  return { ms, packets: (await count()) - before };
}

async function toolsScenario() {
  const [aliceName, bobName] = args.participants;
  const alice = await openTab(aliceName);
  // Nothing opened the camera before this click.
  await alice.page.click("#preview-button", { timeout: stepTimeout(30000) });
  await alice.page.waitForFunction(() => document.getElementById("preview").videoWidth > 0, null, {
    timeout: stepTimeout(30000),
    polling: 100,
  });
  // The fake microphone beeps once a second: take the loudest level over a while.
  seen.preview = await alice.page.evaluate(async () => {
    let loudest = 0;
    for (let i = 0; i < 30; i += 1) {
      loudest = Math.max(loudest, document.getElementById("mic-level").value);
      await new Promise((r) => setTimeout(r, 100));
    }
    const options = (id) => [...document.getElementById(id).options].map((o) => o.textContent);
    return {
      videoWidth: document.getElementById("preview").videoWidth,
      loudest,
      cameras: options("camera-select"),
      microphones: options("mic-select"),
    };
  });
  if (args.screenshots?.prejoin) {
    await alice.page.screenshot({ path: args.screenshots.prejoin, fullPage: true, timeout: stepTimeout(30000) });
  }
  mark("previewed");
  await join(alice);

  const bob = await openTab(bobName);
  await bob.page.check("#start-muted", { timeout: stepTimeout(30000) });
  await bob.page.check("#start-camera-off", { timeout: stepTimeout(30000) });
  await join(bob);
  await waitForStates(callIsUp, "alice and bob never saw each other connected with decoded video");
  mark("call_up");
  seen.bobMuted = (await state(bob)).localTracks;
  await bob.page.waitForSelector("#muted-hint:not([hidden])", { timeout: stepTimeout(30000) });
  seen.mutedHint = true;
  seen.bobCameraOffTile = await bob.page.evaluate(() => document.querySelector("#grid .tile.local").classList.contains("camera-off"));
  // Bob turns his camera on: alice keeps decoding, now pictures rather than black frames.
  await bob.page.click("#camera", { timeout: stepTimeout(30000) });
  await waitForStates(
    ([, b]) => b.localTracks.some((t) => t.kind === "video" && t.enabled),
    "bob's camera did not come on",
    20000,
  );
  seen.bobCameraOn = await bob.page.evaluate(() => ({
    tileOff: document.querySelector("#grid .tile.local").classList.contains("camera-off"),
    button: document.getElementById("camera").textContent,
  }));
  mark("muted_hint");
  // Muted, bob sends no audio at all; unmuted, alice receives his microphone within seconds.
  seen.bobAudioMuted = await audioFromPeer(alice, 2000);
  await bob.page.click("#mic", { timeout: stepTimeout(30000) });
  const until = Date.now() + Math.min(10000, remaining());
  do {
    seen.bobAudioUnmuted = await audioFromPeer(alice, 1000);
  } while (seen.bobAudioUnmuted.packets === 0 && Date.now() < until);
  mark("unmuted");

  // Screen sharing: a large tile at bob's, gone again when alice stops.
  await alice.page.click("#share", { timeout: stepTimeout(30000) });
  await bob.page.waitForFunction(
    () => {
      const tile = document.querySelector("#grid .tile.screen");
      return tile && tile.querySelector("video").videoWidth > 0;
    },
    null,
    { timeout: stepTimeout(20000), polling: 100 },
  );
  seen.sharing = await describe(bob);
  mark("screen_shown");
  await alice.page.click("#share", { timeout: stepTimeout(30000) });
  await bob.page.waitForFunction(() => !document.querySelector("#grid .tile.screen"), null, {
    timeout: stepTimeout(30000),
    polling: 100,
  });
  seen.afterSharing = await describe(bob);
  mark("screen_gone");

  // Meeting basics at bob's: alice's tile lights up while her fake microphone beeps; it is
  // pinned and unpinned from the keyboard alone and shown full screen; the invite link
  // names the room (and no one's name).
  await bob.page.waitForSelector("#grid .tile:not(.local).speaking", { timeout: stepTimeout(20000) });
  const alicePin = "#grid .tile:not(.local) .pin";
  await bob.page.focus(alicePin, { timeout: stepTimeout(30000) });
  await bob.page.keyboard.press("Enter");
  await bob.page.waitForSelector("#grid .tile.pinned:not(.local)", { timeout: stepTimeout(10000) });
  const pinned = await bob.page.evaluate(() => ({
    pressed: document.querySelector("#grid .tile:not(.local) .pin").getAttribute("aria-pressed"),
    label: document.querySelector("#grid .tile:not(.local) .pin").getAttribute("aria-label"),
    gridPinned: document.getElementById("grid").classList.contains("has-pinned"),
  }));
  await bob.page.keyboard.press("Enter");
  await bob.page.waitForSelector("#grid .tile.pinned", { state: "detached", timeout: stepTimeout(10000) });
  await bob.page.click("#grid .tile:not(.local) .fullscreen", { timeout: stepTimeout(30000) });
  await bob.page.waitForFunction(
    () => document.fullscreenElement?.matches(".tile:not(.local)"),
    null,
    { timeout: stepTimeout(10000), polling: 100 },
  );
  await bob.page.evaluate(() => document.exitFullscreen());
  await bob.page.click("#invite", { timeout: stepTimeout(30000) });
  await bob.page.waitForFunction(
    () => /Invite link/.test(document.getElementById("message").textContent),
    null,
    { timeout: stepTimeout(10000), polling: 100 },
  );
  const invite = await bob.page.evaluate(() => document.getElementById("message").textContent);
  const link = new URL(invite.slice(invite.indexOf("http")));
  seen.basics = { pinned, invite: link.href };
  if (link.searchParams.get("room") !== args.room || link.searchParams.has("name")) {
    throw new Error(`the invite link ${link.href} does not name the room alone`);
  }
  if (pinned.pressed !== "true" || !pinned.gridPinned || !/^Pin /.test(pinned.label)) {
    throw new Error(`pinning from the keyboard: ${JSON.stringify(pinned)}`);
  }
  mark("meeting_basics");

  // Device switch in the call: a new camera track through replaceTrack, same connection.
  const pcsBefore = await alice.page.evaluate(() => window.__recorded.peerConnections.length);
  const trackBefore = (await state(alice)).localTracks.find((t) => t.kind === "video");
  const framesBefore = (await state(bob)).peers[0].framesDecoded;
  await alice.page.click("#devices-toggle", { timeout: stepTimeout(30000) });
  const camera = await alice.page.inputValue("#camera-select", { timeout: stepTimeout(30000) });
  await alice.page.selectOption("#camera-select", camera, { timeout: stepTimeout(30000) });
  await waitForStates(
    ([a]) => a.localTracks.some((t) => t.kind === "video" && t.id !== trackBefore.id && t.readyState === "live"),
    "alice's camera track was not replaced",
    30000,
  );
  const newTrack = (await state(alice)).localTracks.find((t) => t.kind === "video");
  const sentTrack = await alice.page.evaluate(() =>
    window.__recorded.peerConnections
      .filter((pc) => pc.connectionState !== "closed")
      .flatMap((pc) => pc.getSenders().map((s) => s.track?.id).filter(Boolean)),
  );
  // Frames keep coming at bob's after the switch (each stats reading is 2 s apart).
  await waitForStates(
    ([a, b]) => b.peers[0]?.connectionState === "connected" && b.peers[0].framesDecoded > framesBefore + 30,
    "bob stopped decoding alice's video after the camera switch",
    30000,
  );
  seen.deviceSwitch = {
    trackBefore: trackBefore.id,
    trackAfter: newTrack.id,
    sentTracks: sentTrack,
    peerConnectionsBefore: pcsBefore,
    peerConnectionsAfter: await alice.page.evaluate(() => window.__recorded.peerConnections.length),
    framesBefore,
    framesAfter: (await state(bob)).peers[0].framesDecoded,
  };
  mark("device_switched");

  // The signaling socket drops: the page reconnects and rejoins, and the call comes back.
  const idBefore = (await state(alice)).id;
  await alice.page.evaluate(() => window.__recorded.sockets.at(-1).close());
  await waitForStates(
    ([a, b]) => a.joined && a.id !== idBefore && b.peers.some((p) => p.id === a.id),
    "alice never rejoined under a new id after her socket dropped",
    20000,
  );
  await waitForStates(callIsUp, "the call did not come back after alice's socket dropped", 30000);
  seen.reconnect = {
    idBefore,
    idAfter: (await state(alice)).id,
    sockets: await alice.page.evaluate(() => window.__recorded.sockets.length),
  };
  mark("reconnected");

  // A phone in portrait: bob's tab at 390 × 844.
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await sleep(500);
  seen.phone = await bob.page.evaluate(() => {
    const grid = document.getElementById("grid").getBoundingClientRect();
    const controls = [...document.querySelectorAll(".controls button:not([hidden])")].map((b) => b.getBoundingClientRect());
    return {
      scrollWidth: document.scrollingElement.scrollWidth,
      innerWidth: window.innerWidth,
      gridWidth: grid.width,
      controlsInside: controls.every((r) => r.left >= 0 && r.right <= window.innerWidth),
    };
  });
  if (args.screenshots?.phone) {
    await bob.page.screenshot({ path: args.screenshots.phone, timeout: stepTimeout(30000) });
  }
  mark("phone");
  return { ok: true };
}

// ---------------------------------------------------------------------------------------
// Scenario "entry"

/** Runs in a page: the message it shows, and which error that is. */
function shownMessage() {
  const message = document.getElementById("message");
  return { hidden: message.hidden, text: message.textContent, error: document.body.dataset.error ?? null };
}

async function waitForError(tab, code) {
  await tab.page.waitForFunction((c) => document.body.dataset.error === c, code, {
    timeout: stepTimeout(30000),
    polling: 100,
  });
  return tab.page.evaluate(shownMessage);
}

/**
 * A room that needs a token, the ways into it and the messages on the way: alice comes with
 * the invitation (token) and her invite link carries it on; mallory comes without and is told
 * she is not let in; bob's browser refuses camera and microphone, so he is told so and still
 * sees alice; last, alice picks a speaker and every incoming tile plays there.
 */
async function entryScenario() {
  const [aliceName, carolName, bobName] = args.participants;
  const alice = await openTab(aliceName);
  await join(alice);
  await alice.page.click("#invite", { timeout: stepTimeout(30000) });
  await alice.page.waitForFunction(() => /Invite link/.test(document.getElementById("message").textContent), null, {
    timeout: stepTimeout(10000),
    polling: 100,
  });
  const invite = (await alice.page.evaluate(shownMessage)).text;
  seen.invite = invite.slice(invite.indexOf("http"));
  mark("invited");

  const mallory = await openTab("mallory", { token: null });
  await mallory.page.click("#join", { timeout: stepTimeout(30000) });
  seen.unauthorized = await waitForError(mallory, "unauthorized");
  seen.malloryJoined = (await state(mallory)).joined;
  await mallory.page.close();
  tabs.splice(tabs.indexOf(mallory), 1);
  mark("unauthorized");

  // Carol's first candidates are lost on the way (both ways): the link between alice and
  // carol stays "connecting" until a page restarts ICE, and then comes up.
  const carol = await openTab(carolName, { init: [loseCandidates, args.loseCandidatesMs] });
  await join(carol);
  await waitForStates(callIsUp, "alice and carol never saw each other connected with decoded video");
  const [aliceState, carolState] = await Promise.all([state(alice), state(carol)]);
  seen.lostCandidates = {
    dropped: await carol.page.evaluate(() => window.__candidatesDropped),
    restarts: aliceState.peers[0].iceRestarts + carolState.peers[0].iceRestarts,
  };
  mark("stuck_link_restarted");

  // Speaker choice: a fake output device; every incoming tile's sound plays there.
  await alice.page.click("#devices-toggle", { timeout: stepTimeout(30000) });
  const speakers = await alice.page.evaluate(() =>
    [...document.getElementById("speaker-select").options].map((o) => ({ value: o.value, label: o.textContent })),
  );
  const chosen = speakers.find((s) => s.value && s.value !== "default");
  if (!chosen) throw new ScenarioError(`no speaker to choose besides the default: ${JSON.stringify(speakers)}`);
  await alice.page.selectOption("#speaker-select", chosen.value, { timeout: stepTimeout(30000) });
  await alice.page.waitForFunction(
    (id) => {
      const remote = [...document.querySelectorAll("#grid .tile:not(.local) video")];
      return remote.length > 0 && remote.every((v) => v.sinkId === id);
    },
    chosen.value,
    { timeout: stepTimeout(10000), polling: 100 },
  );
  seen.speaker = { speakers: speakers.map((s) => s.label), chosen: chosen.label };
  mark("speaker");

  // Another browser, whose permission prompts all answer no (Chromium's own refusal).
  const denying = await script.launch({
    userDataDir: args.deniedUserDataDir,
    chromiumArgs: args.deniedChromiumArgs,
    initScripts: [recordConnections],
  });
  const bob = await openTab(bobName, { browser: denying });
  await join(bob);
  seen.denied = await waitForError(bob, "media-denied");
  await waitForStates(
    (states) => {
      const b = states.at(-1);
      return b.peers.length === 2 && b.peers.every((p) => p.connectionState === "connected" && p.framesDecoded > 0);
    },
    "bob, without camera and microphone, never saw alice and carol",
  );
  seen.deniedState = await state(bob);
  mark("denied");

  // The server goes away between loading the page and pressing Join: dora is told it
  // cannot be reached (and when the page tries again). The test kills the server on the
  // event below; the page notices when its socket cannot connect.
  const dora = await openTab("dora");
  console.log(JSON.stringify({ event: "page-loaded" }));
  const { host, port } = args.probe;
  const until = Date.now() + Math.min(20000, remaining());
  let gone = false;
  while (!gone && Date.now() < until) {
    gone = await tcpConnect(host, port, 300).then(() => false, () => true);
    if (!gone) await sleep(100);
  }
  if (!gone) throw new ScenarioError("the server was still up 20 s after the page-loaded event");
  await dora.page.click("#join", { timeout: stepTimeout(30000) });
  seen.unreachable = await waitForError(dora, "unreachable");
  mark("unreachable");
  return { ok: true };
}

script.run({ six: sixScenario, tools: toolsScenario, entry: entryScenario }, { initScripts: [recordConnections] });
