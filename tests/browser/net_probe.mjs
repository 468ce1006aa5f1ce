// Reachability helpers shared by the browser test scripts.
import crypto from "node:crypto";
import dgram from "node:dgram";
import net from "node:net";

/** Resolves once a TCP connection to host:port opens (and closes it), rejects on error or timeout. */
export function tcpConnect(host, port, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => done(new Error("connect timed out")), timeoutMs);
    function done(error) {
      clearTimeout(timer);
      socket.destroy();
      error ? reject(error) : resolve();
    }
    socket.on("connect", () => done());
    socket.on("error", done);
  });
}

/** Retries `probe` every 100 ms until it resolves, for at most 15 s and never past `deadline`. */
export async function waitForServer(probe, label, deadline) {
  const until = Math.min(deadline, Date.now() + 15000);
  let lastError = "no attempt";
  while (Date.now() < until) {
    try {
      await probe();
      return;
    } catch (error) {
      lastError = String(error?.message ?? error);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`server at ${label} not ready within 15 s: ${lastError}`);
}

/**
 * Resolves once a STUN Binding request over UDP to host:port is answered with a Binding
 * success response carrying the same transaction id; sends it three times (at 0, 1/3 and
 * 2/3 of `timeoutMs`, as a lost datagram is the usual failure) and rejects at `timeoutMs`.
 */
export function stunBinding(host, port, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    const transactionId = crypto.randomBytes(12);
    // RFC 8489 header: Binding request (0x0001), no attributes, magic cookie, transaction id.
    const request = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), transactionId]);
    const send = () => socket.send(request, port, host, (error) => error && done(error));
    const resends = [1, 2].map((i) => setTimeout(send, (timeoutMs * i) / 3));
    const timer = setTimeout(() => done(new Error("no STUN answer")), timeoutMs);
    function done(error) {
      clearTimeout(timer);
      resends.forEach(clearTimeout);
      socket.close();
      error ? reject(error) : resolve();
    }
    socket.on("message", (reply) => {
      const success = reply.length >= 20 && reply.readUInt16BE(0) === 0x0101;
      if (success && reply.subarray(8, 20).equals(transactionId)) done();
    });
    socket.on("error", done);
    send();
  });
}
