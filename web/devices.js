// Cameras, microphones and speakers: opening them (with the person's choice), listing them
// in the selects, and measuring how loud the microphone is.

/** Opens camera and microphone as chosen (a deviceId, or "" for the default). */
export function openDevices({ audio, video, audioId, videoId }) {
  const pick = (wanted, id) => (wanted ? (id ? { deviceId: { exact: id } } : true) : false);
  return navigator.mediaDevices.getUserMedia({
    audio: pick(audio, audioId),
    video: pick(video, videoId),
  });
}

/** Whether this browser can send sound to a chosen speaker. */
export const canPickSpeaker = typeof HTMLMediaElement !== "undefined" &&
  "setSinkId" in HTMLMediaElement.prototype;

/**
 * Fills the selects with the devices the browser lists (names appear once the page has
 * been allowed a device), keeping the current choice when it is still there.
 */
export async function listDevices(selects, current) {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const kinds = { videoinput: selects.camera, audioinput: selects.mic, audiooutput: selects.speaker };
  const counts = { videoinput: 0, audioinput: 0, audiooutput: 0 };
  const options = new Map(Object.values(kinds).map((select) => [select, []]));
  for (const device of devices) {
    const select = kinds[device.kind];
    if (!select || !device.deviceId) continue;
    counts[device.kind] += 1;
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `${kindName(device.kind)} ${counts[device.kind]}`;
    options.get(select).push(option);
  }
  for (const [select, list] of options) {
    const keep = current.get(select) ?? select.value;
    select.replaceChildren(...list);
    if (list.some((option) => option.value === keep)) select.value = keep;
    select.disabled = list.length === 0;
  }
}

function kindName(kind) {
  return { videoinput: "Camera", audioinput: "Microphone", audiooutput: "Speaker" }[kind];
}

let audioContext = null;

/**
 * How loud a microphone is, from 0 to 1, read whenever asked. It listens to a clone of the
 * track, so a muted (disabled) microphone still shows whether someone is speaking: that is
 * what the "you are muted" hint needs.
 */
export class LevelMeter {
  constructor(track) {
    audioContext ??= new AudioContext();
    // A context made before the click that allows sound starts suspended.
    audioContext.resume().catch(() => {});
    this.track = track.clone();
    this.track.enabled = true;
    this.source = audioContext.createMediaStreamSource(new MediaStream([this.track]));
    this.analyser = audioContext.createAnalyser();
    this.analyser.fftSize = 512;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  /** Root mean square of the latest samples, scaled so that speech reaches about 0.5–1. */
  level() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const sample of this.samples) sum += sample * sample;
    return Math.min(1, Math.sqrt(sum / this.samples.length) * 4);
  }

  stop() {
    this.source.disconnect();
    this.track.stop();
  }
}
