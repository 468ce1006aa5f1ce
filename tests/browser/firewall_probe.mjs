// What reaches rendez from the network namespace this runs in, for tests/browser.rs.
//
//   node firewall_probe.mjs '<json>'
//
// The Rust test runs it on both sides of the 443-only firewall: in the server's own
// namespace, where every probe must succeed (proof that rendez is up and listening), and in
// the browsers' namespace, where only TCP 443 may. Each probe is independent and bounded:
//   {"transport": "udp", "port": P}  a STUN Binding request must be answered;
//   {"transport": "tcp", "port": P}  a TCP connection must open.
// It first waits (bounded) until `ready` accepts a TCP connection, so that a server still
// starting up does not pass for a firewall. Prints one line of JSON:
//   {"ok": true, "results": [{"transport", "port", "reached", "error"}...]}
// or {"ok": false, "error": "..."} when `ready` never answered.
//
// Arguments (one JSON object):
//   host        the server's address
//   ready       {port}: TCP port that must accept first (the shared port 443)
//   probes      the list above
//   timeoutMs   per probe

import { stunBinding, tcpConnect, waitForServer } from "./net_probe.mjs";

const args = JSON.parse(process.argv[2] ?? "{}");
const { host, timeoutMs } = args;

try {
  await waitForServer(() => tcpConnect(host, args.ready.port, 1000), `${host}:${args.ready.port}`, Date.now() + 15000);
} catch (error) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(error?.message ?? error) }) + "\n");
  process.exit(0);
}
const results = await Promise.all(
  args.probes.map(async ({ transport, port }) => {
    const probe = transport === "udp" ? stunBinding(host, port, timeoutMs) : tcpConnect(host, port, timeoutMs);
    try {
      await probe;
      return { transport, port, reached: true, error: null };
    } catch (error) {
      return { transport, port, reached: false, error: String(error?.message ?? error) };
    }
  }),
);
process.stdout.write(JSON.stringify({ ok: true, results }) + "\n");
