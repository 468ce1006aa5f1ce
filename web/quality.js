// What getStats() says about one peer connection, and what a person makes of it: how it
// connects (direct or relayed), round-trip time, loss and bitrate since the last reading,
// and a "good / fair / poor" verdict with a label a screen reader can speak.

/**
 * One reading of `report`, with rates measured against `previous` (the last reading, or
 * null): relayed, relayProtocol, framesDecoded, bytesReceived, videoBytesSent, rttMs,
 * lossPercent, kbpsIn, kbpsOut, candidatePairs (ICE candidate pairs not failed: what a
 * connecting link still has to try), at (ms).
 */
export function readLinkStats(report, previous, at) {
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
  let packetsReceived = 0;
  let packetsLost = 0;
  let videoBytesSent = 0;
  let bytesSent = 0;
  for (const s of entries) {
    if (s.type === "inbound-rtp") {
      bytesReceived += s.bytesReceived ?? 0;
      packetsReceived += s.packetsReceived ?? 0;
      packetsLost += Math.max(0, s.packetsLost ?? 0);
      if (s.kind === "video") framesDecoded += s.framesDecoded ?? 0;
    } else if (s.type === "outbound-rtp") {
      bytesSent += s.bytesSent ?? 0;
      if (s.kind === "video") videoBytesSent += s.bytesSent ?? 0;
    }
  }
  const rtt = pair?.currentRoundTripTime;
  const candidatePairs = entries.filter((s) => s.type === "candidate-pair" && s.state !== "failed").length;
  const reading = {
    relayed,
    relayProtocol,
    framesDecoded,
    bytesReceived,
    packetsReceived,
    packetsLost,
    bytesSent,
    videoBytesSent,
    candidatePairs,
    rttMs: typeof rtt === "number" ? Math.round(rtt * 1000) : null,
    lossPercent: null,
    kbpsIn: null,
    kbpsOut: null,
    at,
  };
  if (previous && at > previous.at) {
    const seconds = (at - previous.at) / 1000;
    const rate = (now, before) => Math.max(0, Math.round(((now - before) * 8) / seconds / 1000));
    reading.kbpsIn = rate(bytesReceived, previous.bytesReceived);
    reading.kbpsOut = rate(bytesSent, previous.bytesSent);
    const received = packetsReceived - previous.packetsReceived;
    const lost = packetsLost - previous.packetsLost;
    if (received + lost > 0) reading.lossPercent = Math.round((lost / (received + lost)) * 1000) / 10;
  }
  return reading;
}

/** "good", "fair", "poor" or "unknown" (no reading with rates yet). */
export function verdict(link) {
  if (link.rttMs === null && link.lossPercent === null) return "unknown";
  const rtt = link.rttMs ?? 0;
  const loss = link.lossPercent ?? 0;
  if (rtt < 200 && loss < 2) return "good";
  if (rtt < 500 && loss < 8) return "fair";
  return "poor";
}

/** What the indicator says, in words: "Connection good: 12 ms round trip, 0% loss, …". */
export function describeQuality(link) {
  const level = verdict(link);
  if (level === "unknown") return "Connection quality: measuring…";
  const parts = [];
  if (link.rttMs !== null) parts.push(`${link.rttMs} ms round trip`);
  if (link.lossPercent !== null) parts.push(`${link.lossPercent}% loss`);
  if (link.kbpsIn !== null) parts.push(`${link.kbpsIn} kbit/s in`);
  if (link.kbpsOut !== null) parts.push(`${link.kbpsOut} kbit/s out`);
  return `Connection ${level}: ${parts.join(", ")}`;
}
