// Several participants on rendez's own call page in headless Debian Chromium, for
// tests/browser.rs.
//
//   node call_page.mjs '<json>'
//
// Runs inside the network namespace that the Rust test made (`ip netns exec`), so every
// address it can reach is the test's own. Unlike relay_call.mjs, nothing here makes a peer
// connection: the page served by rendez (web/app.js) does everything, as it would for
// people, and this script only opens it and reads what it shows. It:
//   1. waits (bounded) until rendez accepts connections on the page's port;
//   2. launches /usr/bin/chromium through playwright-core (never a downloaded browser):
//      one browser, one tab per participant, all with the fake camera and microphone;
//   3. opens `pageUrl?room=R&name=N` (plus `&relay=1` when asked) for each participant in
//      turn and presses Join, as a person would (a link never joins by itself), each once
//      the previous one has joined (got its welcome);
//   4. scenario "call": polls `window.rendez.state()` of every tab until each shows all the
//      others connected with decoded video (relayed, when `relay` is set), waits until
//      every tab's tiles play video with their captions, then screenshots the first tab;
//      scenario "room-full": opens one more tab (`extra`) and waits until it shows the
//      room-full message (`<body data-error="room-full">`);
//      scenario "link-only": opens one tab at `pageUrl?room=R&name=N&autojoin=1` with
//      getUserMedia and WebSocket counted from before the page's script runs, reports what
//      it shows after a while without a click (`before`), then presses Join and reports
//      again once it has joined (`after`, which shows the counting sees the page's calls);
//      scenario "rejoin" (two participants): as "call" until the call is up, then reports
//      what the tabs show (`before`), prints the line {"event": "call-up"} and waits until
//      the first participant is back in the call under a new id (the test drains its node
//      meanwhile, so the page reconnects and joins again) with decoded video both ways;
//   5. prints exactly one line of JSON on stdout (script.mjs): {"ok": true|false, "pages": [...], ...}.
// The Rust test makes the assertions; this script only reports what the pages showed.
//
// Arguments (one JSON object):
//   scenario        "call", "room-full" or "link-only"
//   pageUrl         where rendez serves the page, e.g. https://turn.rendez.test:8443/
//   pageUrls        optional, {name: url}: a participant's own page URL instead of pageUrl
//                   (a fleet: each participant on another node)
//   reportCandidates  also report, per tab, each open peer connection's selected candidate
//                   pair (`selectedPairs`: local and remote candidate as getStats() has them)
//                   and its signaling (`signaling`: sockets opened, "reconnect" messages got),
//                   recorded from before the page's own script runs
//   probe           {host, port}: where rendez must accept a TCP connection first
//   room            the room every participant joins
//   participants    their names, in joining order ("link-only": the first one only)
//   extra           "room-full" only: the name of the participant who must be turned away
//   relay           add `&relay=1` (iceTransportPolicy "relay") to every page's URL
//   chromium        path of the browser executable
//   chromiumArgs    extra command-line flags (the Rust test owns the list)
//   userDataDir     a fresh, empty profile directory
//   home            HOME for Chromium (where its NSS database lives)
//   viewport        {width, height} of every tab
//   screenshot      optional PNG path ("call" only): the first participant's tab
//   timeoutMs       budget for the whole script

import { sleep, startScript } from "./script.mjs";

const script = startScript("call_page.mjs", 60000, describe);
const { args, tabs, stepTimeout, remaining, mark } = script;

async function openTab(name, { joined }) {
  const url = new URL(args.pageUrls?.[name] ?? args.pageUrl);
  url.searchParams.set("room", args.room);
  url.searchParams.set("name", name);
  if (args.relay) url.searchParams.set("relay", "1");
  const tab = await script.newTab(name, url);
  await tab.page.goto(url.href, { timeout: stepTimeout(15000) });
  await pressJoin(tab);
  if (joined) await waitUntilJoined(tab);
  return tab;
}

/**
 * Clicks Join as a person would. The click returns once the page has handled it, which with
 * other tabs in a call on a loaded machine can take seconds (the page asks for the camera).
 */
function pressJoin(tab) {
  return tab.page.click("#join", { timeout: stepTimeout(15000) });
}

function waitUntilJoined(tab) {
  return tab.page.waitForFunction(() => window.rendez?.state().joined === true, null, {
    timeout: stepTimeout(15000),
    polling: 100,
  });
}

/** Every other participant connected, with decoded video, over the relay if asked. */
function callIsUp(state, others) {
  if (!state?.joined || state.peers.length !== others) return false;
  return state.peers.every(
    (peer) =>
      peer.connectionState === "connected" &&
      peer.framesDecoded > 0 &&
      (args.relay ? peer.relayed === true : peer.relayed !== null),
  );
}

/** What one tab shows: the page's own state, the error marker, the message, the tiles. */
async function describe(tab) {
  const shown = await tab.page.evaluate(() => {
    const message = document.getElementById("message");
    return {
      state: window.rendez?.state() ?? null,
      bodyError: document.body.dataset.error ?? null,
      message: { hidden: message.hidden, text: message.textContent },
      tiles: [...document.querySelectorAll("#grid .tile")].map((tile) => {
        const video = tile.querySelector("video");
        return {
          name: tile.querySelector(".name").textContent,
          link: tile.querySelector(".link").textContent,
          local: tile.classList.contains("local"),
          videoWidth: video.videoWidth,
          videoHeight: video.videoHeight,
          paused: video.paused,
        };
      }),
    };
  });
  const observed = args.reportCandidates ? await tab.page.evaluate(observedConnections) : {};
  return { name: tab.name, url: tab.url, ...shown, ...observed, console: tab.console.slice(-30) };
}

/**
 * Runs in every page before its own script (`reportCandidates`): keeps each
 * RTCPeerConnection the page makes and counts its signaling sockets and the "reconnect"
 * messages they bring, passing everything on unchanged.
 */
function observeConnections() {
  const peerConnections = [];
  const signaling = { sockets: 0, reconnects: 0 };
  window.__observed = { peerConnections, signaling };
  const NativePeerConnection = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      peerConnections.push(this);
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      signaling.sockets += 1;
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string" && event.data.includes('"reconnect"')) {
          signaling.reconnects += 1;
        }
      });
    }
  };
}

/** Runs in a page: the selected candidate pair of each open peer connection, and the counts. */
async function observedConnections() {
  const observed = window.__observed;
  if (!observed) return { selectedPairs: null, signaling: null };
  const candidate = (c) =>
    c && {
      candidateType: c.candidateType,
      address: c.address ?? c.ip,
      port: c.port,
      protocol: c.protocol,
      relayProtocol: c.relayProtocol ?? null,
      url: c.url ?? null,
    };
  const open = observed.peerConnections.filter((pc) => pc.connectionState !== "closed");
  const selectedPairs = await Promise.all(
    open.map(async (pc) => {
      const report = await pc.getStats();
      const entries = [...report.values()];
      const transport = entries.find((s) => s.type === "transport" && s.selectedCandidatePairId);
      const pair = transport && report.get(transport.selectedCandidatePairId);
      return {
        connectionState: pc.connectionState,
        local: candidate(pair && report.get(pair.localCandidateId)) ?? null,
        remote: candidate(pair && report.get(pair.remoteCandidateId)) ?? null,
      };
    }),
  );
  return { selectedPairs, signaling: { ...observed.signaling } };
}

/** Runs in a page: `count` tiles, all with a picture, the others' captions "connected · …". */
function tilesArePlaying(count) {
  const tiles = [...document.querySelectorAll("#grid .tile")];
  return (
    tiles.length === count &&
    tiles.every((tile) => tile.querySelector("video").videoWidth > 0) &&
    tiles
      .filter((tile) => !tile.classList.contains("local"))
      .every((tile) => tile.querySelector(".link").textContent.startsWith("connected · "))
  );
}

/** Polls every tab's state until `up(states)` holds; false if it never did in time. */
async function waitForStates(up) {
  while (remaining() > 0) {
    const states = await Promise.all(tabs.map((tab) => tab.page.evaluate(() => window.rendez.state())));
    if (up(states)) return true;
    await sleep(250);
  }
  return false;
}

/**
 * Waits until every tab shows the others connected with decoded video, then until what a
 * person would see agrees: every tile plays video (its <video> has dimensions) and the
 * others' captions say how they are connected (they follow the stats, every 2 s). An error
 * text, or null once all is up.
 */
async function waitForCall(phase) {
  const others = args.participants.length - 1;
  if (!(await waitForStates((states) => states.every((state) => callIsUp(state, others))))) {
    return "not every page showed the others connected with decoded video in time";
  }
  mark(`${phase}_connected`);
  for (const tab of tabs) {
    try {
      await tab.page.waitForFunction(tilesArePlaying, args.participants.length, {
        timeout: stepTimeout(10000),
        polling: 100,
      });
    } catch (error) {
      return `${tab.name}'s tiles never all played video with captions: ${error.message}`;
    }
  }
  mark(`${phase}_playing`);
  return null;
}

async function callScenario() {
  for (const name of args.participants) await openTab(name, { joined: true });
  mark("all_joined");
  const error = await waitForCall("all");
  if (error) return { ok: false, error };

  if (args.screenshot) {
    // A few more frames, so no tile is caught on its very first picture.
    await sleep(500);
    await tabs[0].page.screenshot({ path: args.screenshot, timeout: stepTimeout(10000) });
    mark("screenshot");
  }
  return { ok: true };
}

async function rejoinScenario() {
  for (const name of args.participants) await openTab(name, { joined: true });
  mark("all_joined");
  const error = await waitForCall("first");
  if (error) return { ok: false, error };
  const before = { pages: await Promise.all(tabs.map(describe)) };
  const firstId = before.pages[0].state.id;
  process.stdout.write(JSON.stringify({ event: "call-up" }) + "\n");

  // The first participant rejoins under a new id, and the others see that id.
  const rejoined = (states) =>
    states[0].joined &&
    states[0].id !== firstId &&
    states.slice(1).every((state) => state.peers.some((peer) => peer.id === states[0].id));
  if (!(await waitForStates(rejoined))) {
    return { ok: false, before, error: `${tabs[0].name} never rejoined under a new id in time` };
  }
  mark("rejoined");
  const again = await waitForCall("again");
  if (again) return { ok: false, before, error: `after the rejoin: ${again}` };
  return { ok: true, before };
}

async function roomFullScenario() {
  for (const name of args.participants) await openTab(name, { joined: true });
  mark("all_joined");
  const extra = await openTab(args.extra, { joined: false });
  try {
    await extra.page.waitForSelector('body[data-error="room-full"]', {
      state: "attached",
      timeout: stepTimeout(15000),
    });
  } catch (error) {
    return { ok: false, error: `${args.extra} never showed room-full: ${error.message}` };
  }
  mark("room_full_shown");
  // Let a wrongly admitted participant show up in the others' peer lists before they are read.
  await sleep(1000);
  return { ok: true };
}

/**
 * Runs in the page before its own script: counts what joining would do, camera and
 * microphone requests and signaling sockets, passing each call on unchanged.
 */
function countJoinCalls() {
  const calls = { getUserMedia: 0, webSocket: 0 };
  window.__joinCalls = calls;
  const devices = navigator.mediaDevices;
  if (devices?.getUserMedia) {
    const getUserMedia = devices.getUserMedia.bind(devices);
    devices.getUserMedia = (constraints) => {
      calls.getUserMedia += 1;
      return getUserMedia(constraints);
    };
  }
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      calls.webSocket += 1;
      super(...args);
    }
  };
}

/** What the link-only tab shows: the page's state, which view is up, the form, the counts. */
function linkOnlyView(tab) {
  return tab.page.evaluate(() => ({
    state: window.rendez?.state() ?? null,
    calls: { ...window.__joinCalls },
    joinViewHidden: document.getElementById("join-view").hidden,
    callViewHidden: document.getElementById("call-view").hidden,
    room: document.getElementById("room").value,
    name: document.getElementById("name").value,
    focused: document.activeElement?.id ?? null,
  }));
}

async function linkOnlyScenario() {
  const name = args.participants[0];
  const url = new URL(args.pageUrl);
  url.searchParams.set("room", args.room);
  url.searchParams.set("name", name);
  url.searchParams.set("autojoin", "1");
  const tab = await script.newTab(name, url);
  await tab.page.addInitScript(countJoinCalls);
  await tab.page.goto(url.href, { timeout: stepTimeout(15000) });
  // Long enough for a join to have asked for the camera and got its welcome.
  await sleep(2000);
  const before = await linkOnlyView(tab);
  mark("waited_without_click");
  await pressJoin(tab);
  try {
    await waitUntilJoined(tab);
  } catch (error) {
    return { ok: false, before, error: `pressing Join did not join: ${error.message}` };
  }
  mark("joined_after_click");
  const after = await linkOnlyView(tab);
  return { ok: true, before, after };
}

script.run(
  { call: callScenario, "room-full": roomFullScenario, "link-only": linkOnlyScenario, rejoin: rejoinScenario },
  { initScripts: args.reportCandidates ? [observeConnections] : [] },
);
