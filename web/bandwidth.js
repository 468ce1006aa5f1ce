// Bandwidth that fits a mesh. In a full mesh every participant sends its video once per
// peer, so its uplink carries (peers × bitrate): left alone, Chromium aims each copy at up
// to ~2.5 Mbit/s, and a home uplink gives out when the sixth person joins. So every sender
// splits one video budget (the server's `upstream-kbps`, audio not included) among its
// peers, and below a fair share per copy also sends fewer pixels and frames, which look
// better at a low bitrate than a full-size picture starved of bits. Audio is never capped:
// it only gets a higher priority than video on the wire.

/** Below these shares (kbit/s per copy) the picture gets smaller and slower. */
const STEPS = [
  { belowKbps: 150, scaleResolutionDownBy: 4, maxFramerate: 10 },
  { belowKbps: 300, scaleResolutionDownBy: 2, maxFramerate: 15 },
  { belowKbps: 700, scaleResolutionDownBy: 1.5, maxFramerate: 24 },
];
/** A shared screen carries more detail than a face: it gets this part of a peer's share. */
const SCREEN_PART = 0.7;
/** Never ask an encoder for less than this (kbit/s): below it, no picture is worth sending. */
const FLOOR_KBPS = 30;
/**
 * The part of a share the encoder is asked for. `maxBitrate` is a target the rate control
 * overshoots for a moment on a busy picture (measured: 8 % over five seconds of camera
 * noise), so asking for the whole share would spend more than the budget.
 */
const HEADROOM = 0.9;

/**
 * The encoding of each outgoing video to one peer: `maxBitrate` (bit/s) and, for a small
 * share, `scaleResolutionDownBy` and `maxFramerate`. `peers`: how many peers the budget is
 * split among; `sharingScreen`: whether a screen track goes out next to the camera.
 */
export function videoEncodings(budgetKbps, peers, sharingScreen) {
  const perPeer = budgetKbps / Math.max(1, peers);
  const camera = sharingScreen ? perPeer * (1 - SCREEN_PART) : perPeer;
  const screen = perPeer * SCREEN_PART;
  return {
    camera: encodingFor(camera, true),
    screen: sharingScreen ? encodingFor(screen, false) : null,
  };
}

function encodingFor(kbps, scaleDown) {
  const encoding = {
    maxBitrate: Math.round(Math.max(FLOOR_KBPS, kbps * HEADROOM) * 1000),
    scaleResolutionDownBy: 1,
    maxFramerate: 30,
  };
  // A screen keeps its resolution (text must stay readable) and gives up frames instead.
  const step = STEPS.find((s) => kbps < s.belowKbps);
  if (step) {
    if (scaleDown) encoding.scaleResolutionDownBy = step.scaleResolutionDownBy;
    encoding.maxFramerate = scaleDown ? step.maxFramerate : Math.min(step.maxFramerate, 5);
  }
  return encoding;
}

/**
 * Applies `wanted` to the first encoding of `sender` unless it already has it. One call at
 * a time per sender (setParameters needs the parameters of the getParameters just before
 * it); a wish made meanwhile, such as an unmute, is applied as soon as that call is done.
 */
export async function applyEncoding(sender, wanted) {
  if (sender.rendezApplying) {
    sender.rendezNext = wanted;
    return;
  }
  const parameters = sender.getParameters();
  // Before negotiation there is no encoding to change; the next re-balance comes back.
  const encoding = parameters.encodings?.[0];
  if (!encoding) return;
  if (Object.entries(wanted).every(([key, value]) => encoding[key] === value)) return;
  Object.assign(encoding, wanted);
  sender.rendezApplying = true;
  try {
    await sender.setParameters(parameters);
  } catch (error) {
    console.debug("rendez: could not set the encoding:", error);
  } finally {
    sender.rendezApplying = false;
    const next = sender.rendezNext;
    sender.rendezNext = null;
    if (next) applyEncoding(sender, next);
  }
}

/**
 * The encoding of an outgoing microphone: it goes first on a congested link (DSCP marking
 * where the network honours it), and a muted one (`enabled` false) is not encoded at all
 * rather than sent as silence: no bits of it leave, and in a mesh its five encoders and the
 * peers' five decoders rest (six tabs of a meeting on one two-core machine spent about half
 * their CPU on audio).
 */
export function audioEncoding(enabled) {
  return { priority: "high", networkPriority: "high", active: enabled };
}
