// Reachability helpers shared by the browser test scripts.
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
