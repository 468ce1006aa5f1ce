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

/** Quieter than this (dB below full scale) counts as silence. */
const SILENCE_DB = -60;

/**
 * An amplitude (0 to 1, 1 = full scale) on a 0 to 1 scale that follows the ear: decibels
 * from SILENCE_DB (0) to full scale (1). A room's hum stays near 0.1, speech reaches 0.4–0.8.
 */
export function loudness(amplitude) {
  if (!(amplitude > 0)) return 0;
  const db = 20 * Math.log10(amplitude);
  return Math.min(1, Math.max(0, (db - SILENCE_DB) / -SILENCE_DB));
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

  /** How loud the latest samples are (their root mean square), on the scale of `loudness`. */
  level() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const sample of this.samples) sum += sample * sample;
    return loudness(Math.sqrt(sum / this.samples.length));
  }

  stop() {
    this.source.disconnect();
    this.track.stop();
  }
}
