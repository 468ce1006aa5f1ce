// rendez call page. It joins a room through the signaling WebSocket (`GET /ws`) and connects
// a full mesh: one RTCPeerConnection per other participant, with the TURN credentials the
// server hands out in its welcome. Plain ES modules, no build step, nothing loaded from
// elsewhere: the server embeds these files as they are. Beside this file: chat.js (the chat
// panel), bandwidth.js (video caps that fit a mesh), quality.js (getStats readings) and
// devices.js (cameras, microphones, the level meter).
//
// Negotiation follows the "perfect negotiation" pattern (one side polite, decided by comparing
// ids) so that offers crossing each other can never deadlock. On top of that the newcomer is
// the only side that starts: it offers to every peer listed in its welcome, while existing
// participants add their media only when that offer arrives, so glare is rare to begin with.
import { audioEncoding, applyEncoding, videoEncodings } from "./bandwidth.js";
import { Chat } from "./chat.js";
import { LevelMeter, canPickSpeaker, listDevices, loudness, openDevices } from "./devices.js";
import { describeQuality, readLinkStats, verdict } from "./quality.js";

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 10000;
// How often connection stats are read, and the video caps re-balanced: well within the 5 s
// in which a join or a leave must be reflected.
const STATS_EVERY_MS = 2000;
// A link that is stuck this long restarts ICE: its offer and answer are through, yet it is
// not up and has no candidate pair left to try. Chromium never gives up on a link whose
// candidates were lost on the way (with nothing to check it stays "connecting" rather than
// "failed"), so waiting for "failed" alone could wait forever. A link still negotiating or
// checking pairs is slow, not stuck: on a loaded machine an answer took 10 s, and a restart
// then only started the negotiation over. Each further restart of a link that has not come
// up waits twice as long (at most STUCK_MAX_MS), and the polite side waits twice as long as
// the other, so that the two ends of a link do not restart it over each other.
const STUCK_RESTART_MS = 15000;
const STUCK_MAX_MS = 120000;
// How often audio levels are read (speaker highlight, "you are muted", the meter).
const LEVELS_EVERY_MS = 200;
// A level (devices.js `loudness`, about -40 dBFS) above which someone is speaking; a
// speaker stays highlighted this long after.
const SPEAKING_LEVEL = 0.3;
const SPEAKING_HOLD_MS = 1200;
// Outgoing frames are paced below the server's default limit (20 per second, bursts of 40):
// a newcomer to a full room sends five offers and dozens of ICE candidates within a second,
// and a frame the server drops for going too fast is a candidate lost for good.
const SEND_BURST = 30;
const SEND_PER_SECOND = 15;
// How long a warning stays up when the call itself goes on.
const WARNING_MS = 8000;
// The server's limit on room and display names.
const MAX_NAME_CHARS = 64;
// The video budget until a welcome names the server's (its default).
const DEFAULT_UPSTREAM_KBPS = 2500;

// What the page says for each error code: the server's codes and the page's own.
const ERROR_TEXT = {
  "room-full": "This room is full. Try another room name.",
  unauthorized:
    "The server did not let you in: this room needs a valid invitation link. Ask for a fresh one.",
  "rate-limited": "The server is asking this page to slow down.",
  unavailable: "The server is restarting and takes no new joins right now.",
  "bad-message":
    "The server did not understand this page. Reloading the page may help.",
  "media-denied":
    "Camera and microphone access was denied, so the others can neither see nor hear you. " +
    "Allow access in the browser's site settings, then leave and join again.",
  "media-unavailable":
    "No camera or microphone could be opened, so the others can neither see nor hear you. " +
    "You can still see and hear them.",
  "insecure-context":
    "The browser offers camera and microphone only to secure pages (https or localhost), " +
    "so the others can neither see nor hear you.",
  "screen-denied": "Screen sharing was cancelled or is not allowed in this browser.",
  unreachable:
    "The server cannot be reached. Check your connection; this page keeps trying.",
};

const params = new URLSearchParams(location.search);
const byId = (id) => document.getElementById(id);
const ui = {
  joinView: byId("join-view"),
  callView: byId("call-view"),
  form: byId("join-form"),
  join: byId("join"),
  room: byId("room"),
  name: byId("name"),
  roomLabel: byId("room-label"),
  message: byId("message"),
  grid: byId("grid"),
  people: byId("people"),
  mic: byId("mic"),
  camera: byId("camera"),
  share: byId("share"),
  sound: byId("sound"),
  invite: byId("invite"),
  leave: byId("leave"),
  mutedHint: byId("muted-hint"),
  tileTemplate: byId("tile-template"),
  devices: byId("devices"),
  devicesHome: byId("devices-home"),
  devicesCall: byId("devices-call"),
  devicesToggle: byId("devices-toggle"),
  previewArea: byId("preview-area"),
  preview: byId("preview"),
  previewButton: byId("preview-button"),
  micLevel: byId("mic-level"),
  cameraSelect: byId("camera-select"),
  micSelect: byId("mic-select"),
  speakerSelect: byId("speaker-select"),
  startMuted: byId("start-muted"),
  startCameraOff: byId("start-camera-off"),
};

// Everything about the current call. `active` is the user's intent (reconnect while true);
// `joined` means the current socket got its welcome.
const call = {
  room: "",
  name: "",
  token: params.get("token"),
  relayOnly: params.get("relay") === "1",
  active: false,
  joined: false,
  id: null,
  iceServers: [],
  upstreamKbps: DEFAULT_UPSTREAM_KBPS,
  socket: null,
  // Whether any socket of this call ever opened: a first connection that fails means the
  // server cannot be reached, a later one that it went away.
  everConnected: false,
  peers: new Map(),
  localStream: null,
  localTile: null,
  // The microphone's meter (a clone of the track), for the preview, the own tile and the hint.
  meter: null,
  // The shared screen while it is shared: {stream, track, tile}.
  screen: null,
  // The tile shown large, if any (pinned by hand, or a screen that arrived).
  pinned: null,
  speakerId: "",
  error: null,
  // Counts Join presses, so a permission prompt answered after Leave (or after a second
  // Join) cannot start a stale call.
  attempt: 0,
  retryDelay: FIRST_RETRY_MS,
  retryTimer: 0,
  statsTimer: 0,
  levelsTimer: 0,
  lastSpokeMuted: 0,
};

const outbox = { queue: [], tokens: SEND_BURST, refilledAt: 0, timer: 0 };

const chat = new Chat(
  {
    panel: byId("chat-panel"),
    toggle: byId("chat-toggle"),
    badge: byId("chat-badge"),
    log: byId("chat-log"),
    form: byId("chat-form"),
    input: byId("chat-text"),
    error: byId("chat-error"),
  },
  (text) => {
    if (!call.joined) return false;
    send({ type: "chat", text });
    return true;
  },
);

init();

function init() {
  // The input's maxlength does not apply to values set from script.
  ui.room.value = [...(params.get("room") ?? "")].slice(0, MAX_NAME_CHARS).join("");
  ui.name.value = [...(params.get("name") ?? "")].slice(0, MAX_NAME_CHARS).join("");
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    joinFromForm();
  });
  ui.previewButton.addEventListener("click", startPreview);
  ui.cameraSelect.addEventListener("change", () => onDeviceChosen("video"));
  ui.micSelect.addEventListener("change", () => onDeviceChosen("audio"));
  ui.speakerSelect.addEventListener("change", () => setSpeaker(ui.speakerSelect.value));
  for (const element of ui.devices.querySelectorAll(".speaker")) element.hidden = !canPickSpeaker;
  ui.mic.addEventListener("click", () => toggleLocalTrack("audio"));
  ui.camera.addEventListener("click", () => toggleLocalTrack("video"));
  ui.share.addEventListener("click", () => (call.screen ? stopSharing() : startSharing()));
  ui.devicesToggle.addEventListener("click", () => setDevicesOpen(ui.devicesCall.hidden));
  ui.invite.addEventListener("click", copyInviteLink);
  ui.sound.addEventListener("click", enableSound);
  ui.leave.addEventListener("click", leave);
  window.rendez = { state: testState };
  // A link fills in the form, never joins: joining turns on the camera and microphone and
  // puts them in the link's room, so it takes the visitor's own press of Join. (Older links
  // carry `autojoin=1`; it changes nothing now.) With both fields filled, Enter joins.
  if (ui.form.checkValidity()) ui.join.focus();
  else (ui.room.value ? ui.name : ui.room).focus();
}

/** What automated tests read; users never see it. */
function testState() {
  return {
    joined: call.joined,
    id: call.id,
    room: call.room || null,
    error: call.error,
    upstreamKbps: call.upstreamKbps,
    sharing: Boolean(call.screen),
    localTracks: (call.localStream?.getTracks() ?? []).map((t) => ({
      kind: t.kind,
      id: t.id,
      enabled: t.enabled,
      readyState: t.readyState,
    })),
    peers: [...call.peers.values()].map((peer) => ({
      id: peer.id,
      name: peer.name,
      connectionState: peer.pc.connectionState,
      relayed: peer.link.relayed,
      relayProtocol: peer.link.relayProtocol,
      framesDecoded: peer.link.framesDecoded,
      bytesReceived: peer.link.bytesReceived,
      quality: verdict(peer.link),
      screen: Boolean(peer.screenTile),
      iceRestarts: peer.restarts,
    })),
  };
}

// ---------------------------------------------------------------------------------------
// Before joining: preview, meter, device choice

/** Opens the camera and microphone for a look before joining (only ever from a click). */
async function startPreview() {
  ui.previewButton.disabled = true;
  const stream = await openLocalMedia();
  ui.previewButton.disabled = false;
  if (!stream) return;
  // A second press, or a join meanwhile, keeps one stream only.
  if (call.active) {
    stream.getTracks().forEach((track) => track.stop());
    return;
  }
  stopLocalMedia();
  call.localStream = stream;
  showPreview();
  await refreshDeviceLists();
}

function showPreview() {
  ui.preview.srcObject = call.localStream;
  ui.previewArea.hidden = false;
  ui.previewButton.hidden = true;
  restartMeter();
  if (!call.levelsTimer) call.levelsTimer = setInterval(readLevels, LEVELS_EVERY_MS);
}

function refreshDeviceLists() {
  const current = new Map([
    [ui.cameraSelect, localTrack("video")?.getSettings().deviceId],
    [ui.micSelect, localTrack("audio")?.getSettings().deviceId],
    [ui.speakerSelect, call.speakerId],
  ]);
  return listDevices(
    { camera: ui.cameraSelect, mic: ui.micSelect, speaker: ui.speakerSelect },
    current,
  );
}

/** A device picked in a select: takes over at once, in the preview or in the call. */
async function onDeviceChosen(kind) {
  if (!call.localStream) return;
  const select = kind === "video" ? ui.cameraSelect : ui.micSelect;
  await switchDevice(kind, select.value);
}

/**
 * Replaces the camera or microphone with `deviceId`: the new track goes to every peer
 * through replaceTrack, so no connection is negotiated again.
 */
async function switchDevice(kind, deviceId) {
  const old = localTrack(kind);
  let fresh;
  try {
    const stream = await openDevices({
      audio: kind === "audio",
      video: kind === "video",
      audioId: deviceId,
      videoId: deviceId,
    });
    fresh = stream.getTracks()[0];
  } catch (error) {
    console.debug("rendez: could not open the device:", error);
    showError(isPermissionError(error) ? "media-denied" : "media-unavailable");
    return;
  }
  if (!call.localStream) {
    fresh.stop();
    return;
  }
  if (old) {
    fresh.enabled = old.enabled;
    call.localStream.removeTrack(old);
  }
  call.localStream.addTrack(fresh);
  await Promise.all(
    [...call.peers.values()].map((peer) => {
      const sender = peer.pc.getSenders().find((s) => s.track === old && old);
      if (sender) return sender.replaceTrack(fresh).catch((e) => console.debug("rendez:", e));
      // A peer that had nothing of this kind from us gets it by negotiation.
      if (call.joined) addLocalMedia(peer, { receiveMissingKinds: false });
      return null;
    }),
  );
  old?.stop();
  if (kind === "audio") restartMeter();
  // A mute or unmute during the switch changed the new track while the senders still held
  // the old one: their encodings follow the new one now.
  rebalance();
  render();
}

function setSpeaker(deviceId) {
  call.speakerId = deviceId;
  for (const peer of call.peers.values()) applySpeaker(peer.tile.video);
}

function applySpeaker(video) {
  if (!canPickSpeaker || !call.speakerId || video.sinkId === call.speakerId) return;
  video.setSinkId(call.speakerId).catch((e) => console.debug("rendez: setSinkId failed:", e));
}

function restartMeter() {
  call.meter?.stop();
  call.meter = null;
  const mic = localTrack("audio");
  if (mic) {
    try {
      call.meter = new LevelMeter(mic);
    } catch (error) {
      console.debug("rendez: no level meter:", error);
    }
  }
}

/** The devices fieldset moves with the person: into the call, and back to the form. */
function setDevicesOpen(open) {
  ui.devicesCall.hidden = !open;
  ui.devicesToggle.setAttribute("aria-expanded", String(open));
  if (open) refreshDeviceLists();
}

// ---------------------------------------------------------------------------------------
// Joining and leaving

function joinFromForm() {
  join(ui.room.value.trim(), ui.name.value.trim());
}

async function join(room, name) {
  clearMessage();
  Object.assign(call, { room, name, active: true, retryDelay: FIRST_RETRY_MS, everConnected: false });
  const attempt = ++call.attempt;
  ui.devicesCall.append(ui.devices);
  ui.previewArea.hidden = true;
  showCallView();
  const stream = call.localStream ?? (await openLocalMedia());
  // The user may have pressed Leave while the browser was asking for permission.
  if (!call.active || attempt !== call.attempt) {
    if (stream !== call.localStream) stream?.getTracks().forEach((track) => track.stop());
    return;
  }
  call.localStream = stream;
  // Joining with the microphone or camera off still sends the track (silent, black), so
  // turning it on later needs no negotiation.
  const mic = localTrack("audio");
  const camera = localTrack("video");
  if (mic) mic.enabled = !ui.startMuted.checked;
  if (camera) camera.enabled = !ui.startCameraOff.checked;
  if (!call.meter) restartMeter();
  addLocalTile();
  call.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
  if (!call.levelsTimer) call.levelsTimer = setInterval(readLevels, LEVELS_EVERY_MS);
  refreshDeviceLists();
  connect();
}

function leave() {
  call.active = false;
  // Straight out, not through the paced queue: the socket closes right after.
  if (socketIsOpen()) call.socket.send(JSON.stringify({ type: "leave" }));
  endCall();
  clearMessage();
  showJoinView();
}

/** Closes the socket, every peer connection and the camera, and forgets the room. */
function endCall() {
  closeSocket();
  clearTimeout(call.retryTimer);
  clearInterval(call.statsTimer);
  clearInterval(call.levelsTimer);
  call.levelsTimer = 0;
  stopSharing({ tell: false });
  closeAllPeers();
  stopLocalMedia();
  call.localTile?.root.remove();
  Object.assign(call, { localTile: null, id: null, iceServers: [], room: "", pinned: null });
  chat.clear();
  ui.sound.hidden = true;
  ui.mutedHint.hidden = true;
  ui.devicesHome.append(ui.devices);
  ui.previewButton.hidden = false;
  setDevicesOpen(false);
}

/** Opens camera and microphone as chosen, falling back to one of them; shows what failed. */
async function openLocalMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showError("insecure-context");
    return null;
  }
  const chosen = { audioId: ui.micSelect.value, videoId: ui.cameraSelect.value };
  let firstError = null;
  for (const wanted of [{ audio: true, video: true }, { video: true }, { audio: true }]) {
    try {
      const stream = await openDevices({ ...wanted, ...chosen });
      if (firstError) showNotice(partialMediaText(stream));
      return stream;
    } catch (error) {
      firstError ??= error;
      // A refusal is the user's answer for both devices: asking again would only prompt again.
      if (isPermissionError(error)) break;
    }
  }
  console.debug("rendez: no local media:", firstError);
  showError(isPermissionError(firstError) ? "media-denied" : "media-unavailable");
  return null;
}

function isPermissionError(error) {
  return error?.name === "NotAllowedError" || error?.name === "SecurityError";
}

function partialMediaText(stream) {
  return stream.getVideoTracks().length > 0
    ? "No microphone could be opened: the others can see you but not hear you."
    : "No camera could be opened: the others can hear you but not see you.";
}

function stopLocalMedia() {
  call.meter?.stop();
  call.meter = null;
  call.localStream?.getTracks().forEach((track) => track.stop());
  call.localStream = null;
  ui.preview.srcObject = null;
}

function localTrack(kind) {
  return call.localStream?.getTracks().find((track) => track.kind === kind) ?? null;
}

// ---------------------------------------------------------------------------------------
// The signaling socket

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${proto}//${location.host}/ws`);
  call.socket = socket;
  // Events of a socket that was replaced or closed on purpose are ignored.
  socket.onopen = () => call.socket === socket && onSocketOpen();
  socket.onmessage = (event) => call.socket === socket && onSocketMessage(event.data);
  socket.onclose = () => call.socket === socket && onSocketLost();
}

function onSocketOpen() {
  call.everConnected = true;
  const message = { type: "join", room: call.room, name: call.name };
  if (call.token) message.token = call.token;
  send(message);
}

function onSocketMessage(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    console.debug("rendez: ignoring a frame that is not JSON");
    return;
  }
  switch (message.type) {
    case "welcome":
      return onWelcome(message);
    case "peer-joined":
      return onPeerJoined(message);
    case "peer-left":
      return onPeerLeft(message);
    case "signal":
      return onSignal(message);
    case "chat":
      return chat.add(message);
    case "error":
      return onServerError(message);
    case "reconnect":
      return onReconnectAsked();
    // Other types (such as "pong") need no action here.
  }
}

/**
 * A fresh welcome (first join or rejoin after a lost connection) rebuilds the mesh from its
 * peer list: while this page was away the others saw it leave and dropped their side.
 */
function onWelcome(welcome) {
  const { id, peers, iceServers } = welcome;
  closeAllPeers();
  // An entry without URLs would make every RTCPeerConnection constructor throw.
  const usable = (iceServers ?? []).filter((server) => [server.urls].flat().some(Boolean));
  const budget = Number(welcome["upstream-kbps"]);
  Object.assign(call, {
    id,
    iceServers: usable,
    joined: true,
    upstreamKbps: budget > 0 ? budget : DEFAULT_UPSTREAM_KBPS,
  });
  call.retryDelay = FIRST_RETRY_MS;
  if (["connection-lost", "rate-limited", "unreachable"].includes(call.error)) clearMessage();
  chat.showHistory(welcome.chat, id);
  for (const peer of peers) createPeer(peer, { offerer: true });
  render();
}

function onPeerJoined({ id, name }) {
  const old = call.peers.get(id);
  if (old) closePeer(old);
  createPeer({ id, name }, { offerer: false });
  rebalance();
  render();
}

function onPeerLeft({ id }) {
  const peer = call.peers.get(id);
  if (peer) closePeer(peer);
  rebalance();
  render();
}

function onSignal({ from, data }) {
  const peer = call.peers.get(from);
  // The server announces every peer before relaying its signals, so this is a late
  // message from someone who already left.
  if (!peer || !data) return;
  // One at a time per peer: a candidate must not overtake the description before it.
  peer.signals = peer.signals
    .then(() => handleSignal(peer, data))
    .catch((error) => console.debug("rendez: signal from", peer.id, "failed:", error));
}

function onServerError({ code, message }) {
  // Expected when a peer leaves while candidates to it are still on their way.
  if (code === "unknown-peer") return;
  if (code === "bad-message" && chat.rejected(message)) return;
  if (call.joined) {
    // The call goes on, so the warning goes away by itself.
    showError(code, ERROR_TEXT[code] ?? message);
    setTimeout(() => call.error === code && clearMessage(), WARNING_MS);
    return;
  }
  // Turned away at the door. Being too fast, or a server that is restarting, passes; the
  // rest does not.
  if (code === "rate-limited" || code === "unavailable") {
    closeSocket();
    const delay = scheduleReconnect();
    showError(code, `${ERROR_TEXT[code]} Trying again in ${delay / 1000} s…`);
    return;
  }
  call.active = false;
  endCall();
  showJoinView();
  showError(code, ERROR_TEXT[code] ?? message);
}

/**
 * The server is going away (it drains before a restart or hands its visitors to another
 * node): reconnect, and the welcome rebuilds the mesh. Peers keep talking meanwhile.
 */
function onReconnectAsked() {
  closeSocket();
  if (!call.active) return;
  const delay = scheduleReconnect();
  showError("connection-lost", `The server is restarting. Reconnecting in ${delay / 1000} s…`);
  render();
}

/**
 * The connection to the server dropped (or never opened): peers keep talking while we
 * reconnect.
 */
function onSocketLost() {
  closeSocket();
  if (!call.active) return;
  const delay = scheduleReconnect();
  if (call.everConnected) {
    showError(
      "connection-lost",
      `Connection to the server lost. Reconnecting in ${delay / 1000} s…`,
    );
  } else {
    showError("unreachable", `${ERROR_TEXT.unreachable} Next try in ${delay / 1000} s…`);
  }
  render();
}

/** Reconnects after the current backoff delay (1 s, 2 s, 4 s … at most 10 s) and returns it. */
function scheduleReconnect() {
  const delay = call.retryDelay;
  call.retryDelay = Math.min(delay * 2, MAX_RETRY_MS);
  clearTimeout(call.retryTimer);
  call.retryTimer = setTimeout(connect, delay);
  return delay;
}

function closeSocket() {
  const socket = call.socket;
  call.socket = null;
  call.joined = false;
  outbox.queue = [];
  clearTimeout(outbox.timer);
  socket?.close();
}

function socketIsOpen() {
  return call.socket?.readyState === WebSocket.OPEN;
}

function send(message) {
  outbox.queue.push(JSON.stringify(message));
  drainOutbox();
}

/** Sends queued frames as fast as the token bucket allows, then waits for a refill. */
function drainOutbox() {
  clearTimeout(outbox.timer);
  const now = performance.now();
  const refill = ((now - outbox.refilledAt) * SEND_PER_SECOND) / 1000;
  outbox.tokens = Math.min(SEND_BURST, outbox.tokens + refill);
  outbox.refilledAt = now;
  while (outbox.queue.length > 0 && outbox.tokens >= 1 && socketIsOpen()) {
    call.socket.send(outbox.queue.shift());
    outbox.tokens -= 1;
  }
  if (outbox.queue.length > 0 && socketIsOpen()) {
    outbox.timer = setTimeout(drainOutbox, 1000 / SEND_PER_SECOND);
  }
}

function sendSignal(peer, data) {
  send({ type: "signal", to: peer.id, data });
}

// ---------------------------------------------------------------------------------------
// Peer connections

function createPeer({ id, name }, { offerer }) {
  const pc = new RTCPeerConnection({
    iceServers: call.iceServers,
    iceTransportPolicy: call.relayOnly ? "relay" : "all",
  });
  const peer = {
    id,
    name,
    pc,
    polite: call.id < id,
    makingOffer: false,
    ignoreOffer: false,
    pendingCandidates: [],
    signals: Promise.resolve(),
    stream: new MediaStream(),
    // The id of the stream the peer shares its screen in (it says so before the track comes).
    screenStreamId: null,
    screenTile: null,
    link: readLinkStats(new Map(), null, 0),
    lastSpoke: 0,
    // The RTP timestamp of the peer's audio at the last level reading (see peerLevel).
    lastRtpTimestamp: undefined,
    // Since when the link has been stuck (see STUCK_RESTART_MS; null while it is not), how
    // often it was restarted for that since it was last up, and how often ICE was restarted.
    stuckSince: null,
    stuckRestarts: 0,
    restarts: 0,
    tile: createTile(name),
  };
  peer.tile.video.srcObject = peer.stream;
  applySpeaker(peer.tile.video);
  pc.onnegotiationneeded = () => sendOffer(peer);
  pc.onicecandidate = ({ candidate }) => candidate && sendSignal(peer, { candidate });
  pc.ontrack = ({ track, streams }) => onTrack(peer, track, streams[0]);
  pc.onconnectionstatechange = () => onConnectionStateChange(peer);
  call.peers.set(id, peer);
  ui.grid.append(peer.tile.root);
  // The newcomer offers; adding its tracks is what fires negotiationneeded.
  if (offerer) addLocalMedia(peer, { receiveMissingKinds: true });
}

function onTrack(peer, track, stream) {
  if (stream && stream.id === peer.screenStreamId) {
    showPeerScreen(peer, stream);
    return;
  }
  peer.stream.addTrack(track);
  // Chromium refuses a speaker (AbortError) for an element with no sound yet, so a choice
  // made before this peer's audio arrived is applied now.
  if (track.kind === "audio") applySpeaker(peer.tile.video);
  playRemoteVideo(peer.tile.video);
}

/**
 * Sends every local track this connection does not send yet, and the shared screen. The
 * offerer also asks to receive the kinds it has no track for, so a participant without a
 * camera or microphone still sees and hears the others.
 */
function addLocalMedia(peer, { receiveMissingKinds }) {
  const { pc } = peer;
  const sent = new Set(pc.getSenders().map((sender) => sender.track));
  for (const track of call.localStream?.getTracks() ?? []) {
    if (!sent.has(track)) pc.addTrack(track, call.localStream);
  }
  if (call.screen && !sent.has(call.screen.track)) sendScreen(peer);
  if (!receiveMissingKinds) return;
  for (const kind of ["audio", "video"]) {
    const present = pc.getTransceivers().some((t) => t.receiver.track.kind === kind);
    if (!present) pc.addTransceiver(kind, { direction: "recvonly" });
  }
}

async function sendOffer(peer) {
  try {
    peer.makingOffer = true;
    await peer.pc.setLocalDescription();
    sendSignal(peer, { description: peer.pc.localDescription });
  } catch (error) {
    console.debug("rendez: offer to", peer.id, "failed:", error);
  } finally {
    peer.makingOffer = false;
  }
}

async function handleSignal(peer, { description, candidate, screen }) {
  if (screen !== undefined) onScreenAnnounced(peer, screen);
  else if (description) await handleDescription(peer, description);
  else if (candidate) await handleCandidate(peer, candidate);
}

async function handleDescription(peer, description) {
  const { pc } = peer;
  const collision =
    description.type === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
  // The impolite side keeps its own offer; the polite side rolls back and answers.
  peer.ignoreOffer = !peer.polite && collision;
  if (peer.ignoreOffer) return;
  await pc.setRemoteDescription(description);
  if (description.type === "offer") {
    // Existing participants send media only now, on the transceivers the offer created,
    // so answering needs no second round of negotiation.
    addLocalMedia(peer, { receiveMissingKinds: false });
    await pc.setLocalDescription();
    sendSignal(peer, { description: pc.localDescription });
  }
  for (const buffered of peer.pendingCandidates.splice(0)) await addCandidate(peer, buffered);
}

async function handleCandidate(peer, candidate) {
  // addIceCandidate fails before there is a remote description to attach the candidate to.
  if (!peer.pc.remoteDescription) peer.pendingCandidates.push(candidate);
  else await addCandidate(peer, candidate);
}

async function addCandidate(peer, candidate) {
  try {
    await peer.pc.addIceCandidate(candidate);
  } catch (error) {
    // Candidates of an offer this side ignored in a collision cannot apply; one bad
    // candidate never stops the others from connecting.
    if (!peer.ignoreOffer) console.debug("rendez: candidate from", peer.id, "rejected:", error);
  }
}

function onConnectionStateChange(peer) {
  const state = peer.pc.connectionState;
  // A path that stopped working (network change, NAT timeout) gets new candidates: the
  // restart renegotiates through negotiationneeded, on whichever side noticed first.
  if (state === "failed") restartIce(peer);
  if (state === "connected") {
    peer.stuckRestarts = 0;
    rebalance();
  }
  render();
}

function restartIce(peer) {
  peer.restarts += 1;
  peer.pc.restartIce();
}

/** Restarts ICE on links that have been stuck long enough (see STUCK_RESTART_MS). */
function restartStuckLinks(now) {
  for (const peer of call.peers.values()) {
    if (!isStuck(peer)) {
      peer.stuckSince = null;
      continue;
    }
    peer.stuckSince ??= now;
    const patience = Math.min(STUCK_MAX_MS, STUCK_RESTART_MS * 2 ** peer.stuckRestarts) * (peer.polite ? 2 : 1);
    if (now - peer.stuckSince > patience) {
      peer.stuckSince = null;
      peer.stuckRestarts += 1;
      restartIce(peer);
    }
  }
}

/** Whether a link is negotiated but not up, with no ICE candidate pair left to try. */
function isStuck({ pc, link }) {
  return (
    pc.connectionState !== "connected" &&
    pc.signalingState === "stable" &&
    pc.remoteDescription !== null &&
    link.candidatePairs === 0
  );
}

function closePeer(peer) {
  peer.pc.close();
  peer.tile.root.remove();
  peer.screenTile?.root.remove();
  if (call.pinned === peer.tile.root || call.pinned === peer.screenTile?.root) call.pinned = null;
  call.peers.delete(peer.id);
}

function closeAllPeers() {
  for (const peer of [...call.peers.values()]) closePeer(peer);
}

// ---------------------------------------------------------------------------------------
// Bandwidth and connection quality

/**
 * Caps every outgoing video so that all copies together fit the budget (bandwidth.js),
 * and puts audio first. Runs on every join, leave and connection, and with every stats
 * reading, so a change is reflected within one reading (2 s).
 */
function rebalance() {
  const peers = [...call.peers.values()];
  const caps = videoEncodings(call.upstreamKbps, peers.length, Boolean(call.screen));
  for (const peer of peers) {
    for (const sender of peer.pc.getSenders()) {
      const track = sender.track;
      if (!track) continue;
      if (track.kind === "audio") applyEncoding(sender, audioEncoding(track.enabled));
      else if (call.screen && track === call.screen.track) applyEncoding(sender, caps.screen);
      else applyEncoding(sender, caps.camera);
    }
  }
}

async function refreshStats() {
  const peers = [...call.peers.values()];
  restartStuckLinks(performance.now());
  await Promise.all(peers.map(refreshPeerStats));
  rebalance();
  render();
}

async function refreshPeerStats(peer) {
  try {
    peer.link = readLinkStats(await peer.pc.getStats(), peer.link, performance.now());
  } catch {
    // The peer left while its stats were being read.
  }
}

/**
 * Audio levels, several times a second: who speaks (highlighted), the own meter, and the
 * "you are muted" hint for someone speaking into a muted microphone.
 */
function readLevels() {
  const now = performance.now();
  const own = call.meter?.level() ?? 0;
  ui.micLevel.value = own;
  const mic = localTrack("audio");
  if (call.localTile) {
    if (mic?.enabled && own > SPEAKING_LEVEL) call.localTile.lastSpoke = now;
    if (mic && !mic.enabled && own > SPEAKING_LEVEL) call.lastSpokeMuted = now;
    ui.mutedHint.hidden = !(mic && !mic.enabled && now - call.lastSpokeMuted < SPEAKING_HOLD_MS * 2);
    markSpeaking(call.localTile, now);
  }
  for (const peer of call.peers.values()) {
    if (peerLevel(peer) > SPEAKING_LEVEL) peer.tile.lastSpoke = now;
    markSpeaking(peer.tile, now);
  }
}

/**
 * How loud a peer's latest audio is. A source is remembered for 10 s with the level of its
 * last packet, and a muted peer sends none at all, so a level counts only while packets
 * keep coming (its RTP timestamp moved since the previous reading).
 */
function peerLevel(peer) {
  const receiver = peer.pc.getReceivers().find((r) => r.track.kind === "audio");
  const source = receiver?.getSynchronizationSources?.()[0];
  const fresh = source !== undefined && source.rtpTimestamp !== peer.lastRtpTimestamp;
  peer.lastRtpTimestamp = source?.rtpTimestamp;
  return fresh ? loudness(source.audioLevel ?? 0) : 0;
}

function markSpeaking(tile, now) {
  const speaking = now - (tile.lastSpoke ?? -Infinity) < SPEAKING_HOLD_MS;
  tile.root.classList.toggle("speaking", speaking);
}

// ---------------------------------------------------------------------------------------
// Screen sharing

async function startSharing() {
  if (!navigator.mediaDevices?.getDisplayMedia) {
    showError("screen-denied", "This browser cannot share a screen.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (error) {
    console.debug("rendez: no screen:", error);
    showError("screen-denied");
    setTimeout(() => call.error === "screen-denied" && clearMessage(), WARNING_MS);
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!call.active || call.screen || !track) {
    stream.getTracks().forEach((t) => t.stop());
    return;
  }
  track.contentHint = "detail";
  // The browser's own "Stop sharing" ends the track.
  track.addEventListener("ended", () => stopSharing());
  const tile = createTile(`${call.name}'s screen (you)`);
  tile.root.classList.add("screen");
  tile.video.muted = true;
  tile.video.srcObject = stream;
  ui.grid.append(tile.root);
  call.screen = { stream, track, tile };
  for (const peer of call.peers.values()) sendScreen(peer);
  rebalance();
  render();
}

/** Tells `peer` which stream is the screen, then sends it (the message goes first). */
function sendScreen(peer) {
  sendSignal(peer, { screen: call.screen.stream.id });
  peer.pc.addTrack(call.screen.track, call.screen.stream);
}

function stopSharing({ tell = true } = {}) {
  const screen = call.screen;
  if (!screen) return;
  call.screen = null;
  for (const peer of call.peers.values()) {
    const sender = peer.pc.getSenders().find((s) => s.track === screen.track);
    if (sender && peer.pc.signalingState !== "closed") peer.pc.removeTrack(sender);
    if (tell) sendSignal(peer, { screen: null });
  }
  screen.track.stop();
  screen.tile.root.remove();
  if (call.pinned === screen.tile.root) call.pinned = null;
  rebalance();
  render();
}

/** A peer starts (a stream id) or stops (null) sharing its screen. */
function onScreenAnnounced(peer, streamId) {
  peer.screenStreamId = typeof streamId === "string" ? streamId : null;
  if (peer.screenStreamId === null && peer.screenTile) {
    peer.screenTile.root.remove();
    if (call.pinned === peer.screenTile.root) call.pinned = null;
    peer.screenTile = null;
    render();
  }
}

/** The screen a peer shares: its own tile, shown large unless something else is pinned. */
function showPeerScreen(peer, stream) {
  if (!peer.screenTile) {
    peer.screenTile = createTile(`${peer.name}'s screen`);
    peer.screenTile.root.classList.add("screen");
    peer.screenTile.video.muted = true;
    ui.grid.append(peer.screenTile.root);
    // The track goes away when the peer stops (removeTrack), even if the message is lost.
    stream.addEventListener("removetrack", () => onScreenAnnounced(peer, null));
    if (!call.pinned) call.pinned = peer.screenTile.root;
  }
  peer.screenTile.video.srcObject = stream;
  playRemoteVideo(peer.screenTile.video);
  render();
}

// ---------------------------------------------------------------------------------------
// The page

function createTile(name) {
  const root = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  const tile = {
    root,
    video: root.querySelector("video"),
    name: root.querySelector(".name"),
    link: root.querySelector(".link"),
    quality: root.querySelector(".quality"),
    pin: root.querySelector(".pin"),
    fullscreen: root.querySelector(".fullscreen"),
    lastSpoke: -Infinity,
  };
  tile.name.textContent = name;
  tile.video.setAttribute("aria-label", `Video of ${name}`);
  tile.pin.setAttribute("aria-label", `Pin ${name}`);
  tile.fullscreen.setAttribute("aria-label", `Show ${name} full screen`);
  tile.pin.addEventListener("click", () => {
    call.pinned = call.pinned === root ? null : root;
    render();
  });
  tile.fullscreen.addEventListener("click", () => {
    if (document.fullscreenElement === root) document.exitFullscreen().catch(() => {});
    else root.requestFullscreen?.().catch((e) => console.debug("rendez: no full screen:", e));
  });
  root.dataset.initial = [...name][0]?.toUpperCase() ?? "?";
  return tile;
}

function addLocalTile() {
  const tile = createTile(`${call.name} (you)`);
  tile.root.classList.add("local");
  tile.video.muted = true;
  tile.video.srcObject = call.localStream;
  call.localTile = tile;
  ui.grid.prepend(tile.root);
  render();
}

function playRemoteVideo(video) {
  video.play().catch((error) => {
    if (error.name !== "NotAllowedError") return;
    // Browsers may refuse sound without a recent user gesture (their autoplay policy): play
    // muted and offer one button that turns sound on for every tile.
    video.muted = true;
    video.play().catch(() => {});
    ui.sound.hidden = false;
  });
}

function enableSound() {
  for (const peer of call.peers.values()) {
    peer.tile.video.muted = false;
    peer.tile.video.play().catch(() => {});
  }
  ui.sound.hidden = true;
}

function toggleLocalTrack(kind) {
  const track = localTrack(kind);
  if (!track) return;
  // Disabling sends black frames without renegotiating any connection; a muted microphone
  // stops its encoders as well (rebalance), so that nothing of it leaves this machine.
  track.enabled = !track.enabled;
  rebalance();
  render();
}

/** The link that brings someone into this room: room, and the token when there is one. */
async function copyInviteLink() {
  const link = new URL(location.pathname, location.origin);
  link.searchParams.set("room", call.room);
  if (call.token) link.searchParams.set("token", call.token);
  try {
    await navigator.clipboard.writeText(link.href);
    showNotice(`Invite link copied: ${link.href}`);
  } catch {
    // No clipboard (an insecure page, or permission refused): show it to copy by hand.
    showNotice(`Invite link (copy it by hand): ${link.href}`);
  }
  setTimeout(() => call.error === null && clearMessage(), WARNING_MS);
}

function showCallView() {
  ui.joinView.hidden = true;
  ui.callView.hidden = false;
  ui.roomLabel.textContent = `Room: ${call.room}`;
  ui.roomLabel.hidden = false;
  document.title = `${call.room} · rendez`;
  render();
  // Focus follows the view (the Join button just disappeared) without landing on a control
  // that a second press of Enter would trigger.
  ui.callView.focus();
}

function showJoinView() {
  ui.callView.hidden = true;
  ui.joinView.hidden = false;
  ui.roomLabel.hidden = true;
  document.title = "rendez";
  ui.room.focus();
}

/** Brings every visible piece of state up to date; cheap enough to call on any change. */
function render() {
  const tiles = ui.grid.querySelectorAll(".tile").length;
  ui.grid.dataset.count = String(Math.max(1, tiles));
  if (call.pinned && !call.pinned.isConnected) call.pinned = null;
  ui.grid.classList.toggle("has-pinned", Boolean(call.pinned));
  for (const tile of ui.grid.querySelectorAll(".tile")) {
    const pinned = tile === call.pinned;
    tile.classList.toggle("pinned", pinned);
    const pin = tile.querySelector(".pin");
    pin.setAttribute("aria-pressed", String(pinned));
    pin.textContent = pinned ? "Unpin" : "Pin";
  }
  for (const peer of call.peers.values()) renderPeerTile(peer);
  renderLocalTile();
  renderControls();
  renderPeople();
}

function renderPeerTile(peer) {
  peer.tile.root.dataset.state = peer.pc.connectionState;
  peer.tile.link.textContent = describeLink(peer);
  const level = verdict(peer.link);
  const quality = peer.tile.quality;
  quality.hidden = peer.pc.connectionState !== "connected";
  quality.dataset.level = level;
  const label = describeQuality(peer.link);
  quality.setAttribute("aria-label", label);
  quality.title = label;
}

function renderLocalTile() {
  const tile = call.localTile;
  if (!tile) return;
  const mic = localTrack("audio");
  const camera = localTrack("video");
  tile.root.classList.toggle("camera-off", !camera?.enabled);
  const off = [];
  if (!mic?.enabled) off.push("mic off");
  if (!camera?.enabled) off.push("camera off");
  tile.link.textContent = off.join(" · ");
}

function renderControls() {
  const mic = localTrack("audio");
  const camera = localTrack("video");
  ui.mic.disabled = !mic;
  ui.mic.textContent = mic && !mic.enabled ? "Unmute microphone" : "Mute microphone";
  ui.mic.classList.toggle("off", Boolean(mic && !mic.enabled));
  ui.camera.disabled = !camera;
  ui.camera.textContent = camera && !camera.enabled ? "Turn camera on" : "Turn camera off";
  ui.camera.classList.toggle("off", Boolean(camera && !camera.enabled));
  ui.share.textContent = call.screen ? "Stop sharing" : "Share screen";
  ui.share.setAttribute("aria-pressed", String(Boolean(call.screen)));
  ui.share.hidden = !navigator.mediaDevices?.getDisplayMedia;
}

function renderPeople() {
  const items = [personItem(`${call.name} (you)`, call.joined ? "in the room" : "connecting to the server…")];
  for (const peer of call.peers.values()) {
    // Short here; the tile's indicator carries the numbers (and says them to screen readers).
    const level = peer.pc.connectionState === "connected" ? verdict(peer.link) : "unknown";
    const quality = level === "unknown" ? "" : ` · ${level}`;
    items.push(personItem(peer.name, `${describeLink(peer)}${quality}`));
  }
  ui.people.replaceChildren(...items);
}

function personItem(name, detail) {
  const item = document.createElement("li");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = name;
  const status = document.createElement("span");
  status.className = "detail";
  status.textContent = detail;
  item.append(who, status);
  return item;
}

/** "connected · direct", "connected · relayed", or just the state while not connected. */
function describeLink(peer) {
  const state = peer.pc.connectionState;
  if (state !== "connected" || peer.link.relayed === null) return state;
  return `${state} · ${peer.link.relayed ? "relayed" : "direct"}`;
}

function showError(code, text = ERROR_TEXT[code]) {
  showMessage(text, code);
}

function showNotice(text) {
  showMessage(text, null);
}

function showMessage(text, code) {
  call.error = code;
  ui.message.textContent = text;
  ui.message.classList.toggle("error", code !== null);
  ui.message.hidden = false;
  if (code) document.body.dataset.error = code;
  else delete document.body.dataset.error;
}

function clearMessage() {
  call.error = null;
  ui.message.hidden = true;
  ui.message.textContent = "";
  delete document.body.dataset.error;
}
