// rendez call page. It joins a room through the signaling WebSocket (`GET /ws`) and connects
// a full mesh: one RTCPeerConnection per other participant, with the TURN credentials the
// server hands out in its welcome. Plain script, no build step, nothing loaded from elsewhere:
// the server embeds this file as it is.
//
// Negotiation follows the "perfect negotiation" pattern (one side polite, decided by comparing
// ids) so that offers crossing each other can never deadlock. On top of that the newcomer is
// the only side that starts: it offers to every peer listed in its welcome, while existing
// participants add their media only when that offer arrives, so glare is rare to begin with.
"use strict";

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 10000;
const STATS_EVERY_MS = 2000;
// Outgoing frames are paced below the server's default limit (20 per second, bursts of 40):
// a newcomer to a full room sends five offers and dozens of ICE candidates within a second,
// and a frame the server drops for going too fast is a candidate lost for good.
const SEND_BURST = 30;
const SEND_PER_SECOND = 15;
// How long a warning stays up when the call itself goes on.
const WARNING_MS = 8000;
// The server's limit on room and display names.
const MAX_NAME_CHARS = 64;

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
  sound: byId("sound"),
  leave: byId("leave"),
  tileTemplate: byId("tile-template"),
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
  socket: null,
  peers: new Map(),
  localStream: null,
  localTile: null,
  error: null,
  // Counts Join presses, so a permission prompt answered after Leave (or after a second
  // Join) cannot start a stale call.
  attempt: 0,
  retryDelay: FIRST_RETRY_MS,
  retryTimer: 0,
  statsTimer: 0,
};

const outbox = { queue: [], tokens: SEND_BURST, refilledAt: 0, timer: 0 };

init();

function init() {
  // The input's maxlength does not apply to values set from script.
  ui.room.value = [...(params.get("room") ?? "")].slice(0, MAX_NAME_CHARS).join("");
  ui.name.value = [...(params.get("name") ?? "")].slice(0, MAX_NAME_CHARS).join("");
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    joinFromForm();
  });
  ui.mic.addEventListener("click", () => toggleLocalTrack("audio"));
  ui.camera.addEventListener("click", () => toggleLocalTrack("video"));
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
    peers: [...call.peers.values()].map((peer) => ({
      id: peer.id,
      name: peer.name,
      connectionState: peer.pc.connectionState,
      relayed: peer.link.relayed,
      relayProtocol: peer.link.relayProtocol,
      framesDecoded: peer.link.framesDecoded,
      bytesReceived: peer.link.bytesReceived,
    })),
  };
}

// ---------------------------------------------------------------------------------------
// Joining and leaving

function joinFromForm() {
  join(ui.room.value.trim(), ui.name.value.trim());
}

async function join(room, name) {
  clearMessage();
  Object.assign(call, { room, name, active: true, retryDelay: FIRST_RETRY_MS });
  const attempt = ++call.attempt;
  showCallView();
  const stream = await openLocalMedia();
  // The user may have pressed Leave while the browser was asking for permission.
  if (!call.active || attempt !== call.attempt) {
    stream?.getTracks().forEach((track) => track.stop());
    return;
  }
  call.localStream = stream;
  addLocalTile();
  call.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
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
  closeAllPeers();
  stopLocalMedia();
  call.localTile?.root.remove();
  Object.assign(call, { localTile: null, id: null, iceServers: [], room: "" });
  ui.sound.hidden = true;
}

/** Opens camera and microphone, falling back to one of them; shows what went wrong. */
async function openLocalMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showError("insecure-context");
    return null;
  }
  let firstError = null;
  for (const constraints of [{ audio: true, video: true }, { video: true }, { audio: true }]) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
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
  call.localStream?.getTracks().forEach((track) => track.stop());
  call.localStream = null;
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
function onWelcome({ id, peers, iceServers }) {
  closeAllPeers();
  // An entry without URLs would make every RTCPeerConnection constructor throw.
  const usable = (iceServers ?? []).filter((server) => [server.urls].flat().some(Boolean));
  Object.assign(call, { id, iceServers: usable, joined: true });
  call.retryDelay = FIRST_RETRY_MS;
  if (call.error === "connection-lost" || call.error === "rate-limited") clearMessage();
  for (const peer of peers) createPeer(peer, { offerer: true });
  render();
}

function onPeerJoined({ id, name }) {
  const old = call.peers.get(id);
  if (old) closePeer(old);
  createPeer({ id, name }, { offerer: false });
  render();
}

function onPeerLeft({ id }) {
  const peer = call.peers.get(id);
  if (peer) closePeer(peer);
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

/** The connection to the server dropped: peers keep talking while we reconnect. */
function onSocketLost() {
  closeSocket();
  if (!call.active) return;
  const delay = scheduleReconnect();
  showError(
    "connection-lost",
    `Connection to the server lost. Reconnecting in ${delay / 1000} s…`,
  );
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
    link: { relayed: null, relayProtocol: null, framesDecoded: 0, bytesReceived: 0 },
    tile: createTile(name),
  };
  peer.tile.video.srcObject = peer.stream;
  pc.onnegotiationneeded = () => sendOffer(peer);
  pc.onicecandidate = ({ candidate }) => candidate && sendSignal(peer, { candidate });
  pc.ontrack = ({ track }) => {
    peer.stream.addTrack(track);
    playRemoteVideo(peer.tile.video);
  };
  pc.onconnectionstatechange = () => onConnectionStateChange(peer);
  call.peers.set(id, peer);
  ui.grid.append(peer.tile.root);
  // The newcomer offers; adding its tracks is what fires negotiationneeded.
  if (offerer) addLocalMedia(peer, { receiveMissingKinds: true });
}

/**
 * Sends every local track this connection does not send yet. The offerer also asks to
 * receive the kinds it has no track for, so a participant without a camera or microphone
 * still sees and hears the others.
 */
function addLocalMedia(peer, { receiveMissingKinds }) {
  const { pc } = peer;
  const sent = new Set(pc.getSenders().map((sender) => sender.track));
  for (const track of call.localStream?.getTracks() ?? []) {
    if (!sent.has(track)) pc.addTrack(track, call.localStream);
  }
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

async function handleSignal(peer, { description, candidate }) {
  if (description) await handleDescription(peer, description);
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
  // A path that stopped working (network change, NAT timeout) gets new candidates.
  if (peer.pc.connectionState === "failed") peer.pc.restartIce();
  render();
}

function closePeer(peer) {
  peer.pc.close();
  peer.tile.root.remove();
  call.peers.delete(peer.id);
}

function closeAllPeers() {
  for (const peer of [...call.peers.values()]) closePeer(peer);
}

async function refreshStats() {
  const peers = [...call.peers.values()];
  await Promise.all(peers.map(refreshPeerStats));
  render();
}

async function refreshPeerStats(peer) {
  try {
    peer.link = readLinkStats(await peer.pc.getStats());
  } catch {
    // The peer left while its stats were being read.
  }
}

/**
 * Direct or relayed (from the selected candidate pair), how this end reaches its relay
 * (`relayProtocol`: "udp", "tcp" or "tls"; null when its own candidate is not relayed), and
 * what arrived so far.
 */
function readLinkStats(report) {
  const entries = [...report.values()];
  const transport = entries.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  // Firefox marks the selected pair itself instead of naming it in the transport entry.
  const pair = transport
    ? report.get(transport.selectedCandidatePairId)
    : entries.find((s) => s.type === "candidate-pair" && s.selected);
  const local = pair && report.get(pair.localCandidateId);
  const remote = pair && report.get(pair.remoteCandidateId);
  const relayed =
    local && remote ? local.candidateType === "relay" || remote.candidateType === "relay" : null;
  const relayProtocol = local?.candidateType === "relay" ? (local.relayProtocol ?? null) : null;
  let framesDecoded = 0;
  let bytesReceived = 0;
  for (const s of entries.filter((s) => s.type === "inbound-rtp")) {
    bytesReceived += s.bytesReceived ?? 0;
    if (s.kind === "video") framesDecoded += s.framesDecoded ?? 0;
  }
  return { relayed, relayProtocol, framesDecoded, bytesReceived };
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
  };
  tile.name.textContent = name;
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
  // Disabling sends silence or black frames without renegotiating any connection.
  track.enabled = !track.enabled;
  render();
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
  ui.grid.dataset.count = String(call.peers.size + 1);
  for (const peer of call.peers.values()) renderPeerTile(peer);
  renderLocalTile();
  renderControls();
  renderPeople();
}

function renderPeerTile(peer) {
  peer.tile.root.dataset.state = peer.pc.connectionState;
  peer.tile.link.textContent = describeLink(peer);
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
}

function renderPeople() {
  const items = [personItem(`${call.name} (you)`, call.joined ? "in the room" : "connecting to the server…")];
  for (const peer of call.peers.values()) items.push(personItem(peer.name, describeLink(peer)));
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
