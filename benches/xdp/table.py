#!/usr/bin/env python3
"""The table of benches/xdp/compare.sh: medians per load and server over results.jsonl.

usage: table.py RESULTS.jsonl MACHINE.txt STEAL_IN_TASK_TIMES(true|false)

Server-side CPU of a run = the server process (all threads) + the NAPI threads of the
server's interface, over the generator's measured window, minus the idle baseline (the same
server and topology without traffic, measured just before, as a rate × the window), and —
only when the kernel leaves steal inside task times — scaled by busy / (busy + steal).
Relayed packets count both directions (two per round trip), as in benches/README.md.
"""

import json
import statistics
import sys
from collections import defaultdict

SERVERS = ("coturn", "rendez-sockets", "rendez-xdp")


def load_runs(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(list)
    failed = defaultdict(int)
    unavailable = {}
    loads = []
    for r in runs:
        key = (r["load"], r["label"])
        if r["load"] not in loads:
            loads.append(r["load"])
        if r.get("unavailable"):
            unavailable[r["label"]] = r["unavailable"]
        elif r.get("failed"):
            failed[key] += 1
        else:
            by[key].append(r)
    return by, failed, unavailable, loads


def derive(r, steal_in_task_times):
    """Adds the corrected figures to one run."""
    window = r["window_seconds"]
    relayed = r["window_received"] * 2
    scale = 1.0
    steal = r.get("steal_seconds") or 0.0
    busy = r.get("machine_cpu_seconds") or 0.0
    if steal_in_task_times and busy + steal > 0:
        scale = busy / (busy + steal)
    idle_rate = lambda key: (r.get(key) or 0.0) / r["idle_seconds"] if r.get("idle_seconds") else 0.0
    process = (r["server_cpu_seconds"] or 0.0) - idle_rate("idle_server_cpu_seconds") * window
    threads = (r.get("server_threads_cpu_seconds") or 0.0) - idle_rate("idle_server_threads_cpu_seconds") * window
    process, threads = max(process * scale, 0.0), max(threads * scale, 0.0)
    side = process + threads
    ours = (side + r["generator_cpu_seconds"] + (r.get("client_threads_cpu_seconds") or 0.0) * scale)
    whole_run_relayed = r["received"] * 2
    r.update({
        "relayed": relayed,
        "side_process": process,
        "side_threads": threads,
        "side": side,
        "side_us_per_packet": side / relayed * 1e6 if relayed else None,
        "packets_per_side_cpu_second": relayed / side if side > 0 else None,
        "machine_us_per_packet": busy / relayed * 1e6 if relayed else None,
        "background": idle_rate("idle_machine_cpu_seconds"),
        "ours_us_per_packet": ours / relayed * 1e6 if relayed else None,
        "udp_in_per_packet": r["server_udp_in"] / whole_run_relayed if whole_run_relayed else None,
        "udp_out_per_packet": r["server_udp_out"] / whole_run_relayed if whole_run_relayed else None,
        "xdp_per_packet": (r["rendez_xdp_packets"] / whole_run_relayed
                           if "rendez_xdp_packets" in r and whole_run_relayed else None),
        "user_relayed_per_packet": (r["rendez_relayed_packets"] / whole_run_relayed
                                    if "rendez_relayed_packets" in r and whole_run_relayed else None),
    })


def path_of(udp_in_per_packet):
    """Which path carried the relayed packets, from the server namespace's own UDP counters:
    every packet the sockets path relays is one datagram into a server socket; a packet the
    XDP program relays never reaches the UDP layer."""
    if udp_in_per_packet is None:
        return "–"
    if udp_in_per_packet < 0.05:
        return "XDP"
    if udp_in_per_packet > 0.95:
        return "sockets"
    return f"mixed ({udp_in_per_packet:.0%} sockets)"


def fmt(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:.1f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def main():
    results, machine_file, steal_flag = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
    by, failed, unavailable, loads = load_runs(results)
    for runs in by.values():
        for r in runs:
            derive(r, steal_flag)

    def median(load, label, key):
        values = [r[key] for r in by[(load, label)] if isinstance(r.get(key), (int, float))]
        return statistics.median(values) if values else None

    print("Relayed packets per server-side CPU-second (server process + its interface's NAPI")
    print("threads, idle baseline subtracted), medians; both directions counted.")
    print()
    print("| load (offered relayed pkt/s) | coturn | rendez sockets | rendez XDP | sockets/coturn | XDP/coturn | XDP/sockets |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        c, s, x = (median(load, label, "packets_per_side_cpu_second") for label in SERVERS)
        cells = []
        for label, v in zip(SERVERS, (c, s, x)):
            cells.append("unavailable" if label in unavailable and v is None else fmt(v))
        print(f"| {load} | {' | '.join(cells)} | {ratio(s, c)} | {ratio(x, c)} | {ratio(x, s)} |")
    for label, why in unavailable.items():
        print()
        print(f"{label}: unavailable — {why}")

    print()
    print("Details (medians). µs/pkt: CPU microseconds per relayed packet. Server side = server")
    print("process + NAPI threads of its interface, idle-corrected. Whole machine: /proc/stat busy")
    print("time over the window, everyone's load included; background: the machine's busy CPU-s")
    print("per second in the idle baseline just before (other people's work); ours: server side")
    print("+ generator + the world interface's NAPI threads. UDP in/out: datagrams through the server")
    print("namespace's UDP layer per relayed packet (whole run), and the path that follows from")
    print("it; XDP / relayed counter: rendez's `rendez_xdp_*packets*` and")
    print("`rendez_relayed_packets_total` (deltas over the run) per relayed packet.")
    print()
    print("| load | server | runs | relayed pkt/s | loss | p50 µs | server side µs/pkt | of which process | of which NAPI | whole machine µs/pkt | background CPU-s/s | ours µs/pkt | UDP in/out per pkt | path | XDP counter per pkt | relayed counter per pkt | steal CPU-s | other CPU-s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for load in loads:
        for label in SERVERS:
            runs = by[(load, label)]
            bad = failed[(load, label)]
            if not runs and not bad:
                continue
            m = lambda key: median(load, label, key)
            relayed = m("relayed") or 0
            per_packet = lambda key: (m(key) / relayed * 1e6) if relayed and m(key) is not None else None
            loss = m("loss")
            udp_in, udp_out = m("udp_in_per_packet"), m("udp_out_per_packet")
            udp = "–" if udp_in is None else f"{udp_in:.2f} / {udp_out:.2f}"
            runs_text = f"{len(runs)}" + (f" (+{bad} failed)" if bad else "")
            print(f"| {load} | {label} | {runs_text} | {fmt(m('relayed_pps'))} | "
                  f"{'–' if loss is None else f'{loss:.2%}'} | {fmt(m('p50_us'))} | "
                  f"{fmt(m('side_us_per_packet'))} | {fmt(per_packet('side_process'))} | "
                  f"{fmt(per_packet('side_threads'))} | {fmt(m('machine_us_per_packet'))} | "
                  f"{fmt(m('background'), 2)} | {fmt(m('ours_us_per_packet'))} | {udp} | "
                  f"{path_of(udp_in)} | {fmt(m('xdp_per_packet'), 2)} | "
                  f"{fmt(m('user_relayed_per_packet'), 2)} | {fmt(m('steal_seconds'), 2)} | "
                  f"{fmt(m('other_cpu_seconds'), 2)} |")
    print()
    print("Machine:")
    print()
    print("```")
    print(open(machine_file).read().rstrip())
    print("```")


if __name__ == "__main__":
    main()
