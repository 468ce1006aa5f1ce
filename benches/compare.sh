#!/usr/bin/env bash
# Benchmarks rendez against coturn on loopback with one load generator (rendez-loadgen),
# alternating runs (rendez, coturn, forwarder, rendez, coturn, ...), and prints one table of
# medians with the ratio rendez/coturn and the raw forwarder ceiling. See benches/README.md.
#
#   benches/compare.sh            # full run, about 10 minutes on 2 cores
#   benches/compare.sh --quick    # smoke run, under 2 minutes
#   benches/compare.sh --only tcp,tls   # TURN over TCP and TLS only, about 4 minutes
#
# Options (or environment variables REPS, DURATION, WARMUP, WINDOW, MEMORY_ALLOCATIONS,
# ONLY, OUT, QUICK=1, BUILD=0, PIN=0, TLS_VERSION):
#   --reps N           runs per server and scenario (default 3; quick 1)
#   --duration S       measured seconds per run (default 3; quick 1)
#   --warmup S         unmeasured seconds of traffic first (default 0.5; quick 0.3)
#   --window N         packets in flight for saturation runs (default 64)
#   --memory-allocations N   allocations held open in the memory scenario (default 10000)
#   --only LIST        comma-separated groups: binding,relay,churn,memory,latency,tcp,tls
#                      (tcp: tcp-100-1 … tcp-1000-4; tls: tls-100-1 … tls-1000-4)
#   --tls-version V    TLS version the generator offers: 1.2 (default: coturn 4.6
#                      speaks no 1.3), 1.3 or any
#   --out DIR          where results.jsonl, logs and table.md go (default: a new /tmp dir)
#   --no-build         use the binaries already in target/release
#   --no-pin           do not pin the server to one CPU and the generator to the others
#
# Everything stays on 127.0.0.1; every run is bounded by the generator's own limits and by
# `timeout`; every server this script starts is stopped on exit (trap).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

REPS=${REPS:-}
DURATION=${DURATION:-}
WARMUP=${WARMUP:-}
WINDOW=${WINDOW:-64}
MEMORY_ALLOCATIONS=${MEMORY_ALLOCATIONS:-}
ONLY=${ONLY:-binding,relay,churn,memory,latency,tcp,tls}
TLS_VERSION=${TLS_VERSION:-1.2}
OUT=${OUT:-}
BUILD=${BUILD:-1}
PIN=${PIN:-1}
QUICK=${QUICK:-0}

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --window) WINDOW=$2; shift ;;
        --memory-allocations) MEMORY_ALLOCATIONS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --tls-version) TLS_VERSION=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-pin) PIN=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    REPS=${REPS:-1} DURATION=${DURATION:-1} WARMUP=${WARMUP:-0.3}
    MEMORY_ALLOCATIONS=${MEMORY_ALLOCATIONS:-2000} SETTLE=0.5
fi
REPS=${REPS:-3} DURATION=${DURATION:-3} WARMUP=${WARMUP:-0.5}
MEMORY_ALLOCATIONS=${MEMORY_ALLOCATIONS:-10000} SETTLE=${SETTLE:-1}
OUT=${OUT:-$(mktemp -d /tmp/rendez-bench.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# Loopback ports. The listeners and the relay range sit below the kernel's ephemeral
# range (32768+), where the generator's client sockets and connections (and any other
# program's) live, so a server's bind never collides with someone's client port.
LISTEN_IP=127.0.0.1
RENDEZ_PORT=30780 # UDP and TCP
RENDEZ_TLS_PORT=30785
COTURN_PORT=30790 # UDP and TCP
COTURN_TLS_PORT=30795
FORWARDER_PORT=30800
PEER_PORT=30801
RELAY_MIN=10000
RELAY_MAX=29999
USER_NAME=bench
PASSWORD=bench
REALM=bench

BIN=target/release
LOADGEN=$BIN/rendez-loadgen
SERVER_PID=""
# How the generator's clients reach the server: udp, tcp or tls (set per scenario group).
TRANSPORT=udp
# A self-signed certificate for 127.0.0.1, made by make_certificate for both servers.
CERT=$OUT/cert.pem
KEY=$OUT/key.pem

log() { printf '%s\n' "$*" >&2; }

# --- setup -------------------------------------------------------------------------------

ensure_coturn() {
    command -v turnserver >/dev/null && return
    log "coturn is missing: installing Debian's package"
    if [[ $(id -u) != 0 ]]; then
        log "run as root (or install coturn yourself: apt-get install -y coturn)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq coturn >/dev/null || {
        apt-get update -qq && apt-get install -y -qq coturn >/dev/null
    }
}

build() {
    ((BUILD)) || return 0
    log "building rendez, rendez-loadgen and rendez-forwarder (release)"
    cargo build --release --quiet --features loadgen \
        --bin rendez --bin rendez-loadgen --bin rendez-forwarder
}

# TLS scenarios: one self-signed ECDSA P-256 certificate for 127.0.0.1, used by both
# servers (the generator accepts any certificate). Without openssl they are skipped.
make_certificate() {
    enabled tls || return 0
    if ! command -v openssl >/dev/null; then
        log "openssl is missing: the tls scenarios are skipped"
        ONLY=${ONLY//tls/}
        return 0
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$KEY" -out "$CERT" -days 2 -subj /CN=localhost \
        -addext subjectAltName=IP:127.0.0.1 2>>"$OUT/openssl.log"
}

# 10 000 client sockets in the generator and 10 000 relay sockets in the server.
raise_fd_limit_or_warn() {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local limit
    limit=$(ulimit -n)
    if ((limit < MEMORY_ALLOCATIONS + 1000)); then
        log "warning: ulimit -n is $limit; the memory scenario needs $((MEMORY_ALLOCATIONS + 1000))"
    fi
}

# Pinning (benches/lib.sh's setup_pinning): each side's CPU time is its own and the server
# cannot spread over the generator's core (coturn runs one relay thread, rendez one
# worker). rendez with workers = 2 runs unpinned.

write_rendez_config() { # WORKERS FILE
    local signal='listen = "127.0.0.1:0"'
    grep -q 'pub enabled: bool' src/config.rs && signal='enabled = false'
    local workers=""
    grep -q 'pub workers:' src/config.rs && workers="workers = $1"
    local tls_listen="" tls_section=""
    if [[ $TRANSPORT == tls ]]; then
        tls_listen="tls-listen = [\"$LISTEN_IP:$RENDEZ_TLS_PORT\"]"
        printf -v tls_section '[tls]\ncert = "%s"\nkey = "%s"' "$CERT" "$KEY"
    fi
    cat >"$2" <<EOF
realm = "$REALM"
listen = ["$LISTEN_IP:$RENDEZ_PORT"]
$tls_listen
relay-ip = "$LISTEN_IP"
relay-ports = "$RELAY_MIN-$RELAY_MAX"
log-level = "warn"
$workers

[signal]
$signal

[auth]
[[auth.users]]
name = "$USER_NAME"
password = "$PASSWORD"

[peers]
allow = ["127.0.0.0/8", "127.0.0.1/32"]

$(limits_section)

$tls_section
EOF
}

# --- servers -------------------------------------------------------------------------------

# Starts KIND (rendez, rendez-w2, coturn, forwarder) in the background; sets SERVER_PID
# and SERVER_PORT (the TLS listener's with TRANSPORT=tls). MODE is the generator's: the
# forwarder echoes for `echo`.
start_server() { # KIND MODE
    local kind=$1 mode=$2 pin=()
    [[ -n $SERVER_CPUS && $kind != rendez-w2 ]] && pin=(taskset -c "$SERVER_CPUS")
    case $kind in
        rendez | rendez-w2)
            local workers=1
            [[ $kind == rendez-w2 ]] && workers=2
            write_rendez_config "$workers" "$OUT/rendez-$kind-$TRANSPORT.toml"
            SERVER_PORT=$RENDEZ_PORT
            [[ $TRANSPORT == tls ]] && SERVER_PORT=$RENDEZ_TLS_PORT
            "${pin[@]}" "$BIN/rendez" serve --config "$OUT/rendez-$kind-$TRANSPORT.toml" \
                >>"$OUT/$kind.log" 2>&1 &
            ;;
        coturn)
            SERVER_PORT=$COTURN_PORT
            # TCP shares the UDP port; TLS gets its own listener and the certificate.
            local tls=(--no-tls)
            if [[ $TRANSPORT == tls ]]; then
                SERVER_PORT=$COTURN_TLS_PORT
                tls=(--tls-listening-port "$COTURN_TLS_PORT" --cert "$CERT" --pkey "$KEY")
            fi
            # -n: no config file; foreground (no -o); one relay thread.
            "${pin[@]}" turnserver -n --no-cli "${tls[@]}" --no-dtls \
                --listening-ip "$LISTEN_IP" --listening-port "$COTURN_PORT" \
                --relay-ip "$LISTEN_IP" --min-port "$RELAY_MIN" --max-port "$RELAY_MAX" \
                --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" \
                --allow-loopback-peers --relay-threads 1 \
                --pidfile "$OUT/turnserver.pid" --log-file "$OUT/coturn.log" \
                --no-stdout-log --simple-log >>"$OUT/coturn.out" 2>&1 &
            ;;
        forwarder)
            SERVER_PORT=$FORWARDER_PORT
            local target=(--peer "$LISTEN_IP:$PEER_PORT")
            [[ $mode == echo ]] && target=(--echo)
            "${pin[@]}" "$BIN/rendez-forwarder" --listen "$LISTEN_IP:$FORWARDER_PORT" \
                "${target[@]}" --duration 900 >>"$OUT/forwarder.log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
}

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# --- runs ----------------------------------------------------------------------------------

# One run: start KIND, drive it with the generator, record its JSON line, stop it.
run_case() { # SCENARIO KIND MODE GENERATOR-ARGS...
    local scenario=$1 kind=$2 mode=$3
    shift 3
    # The forwarder carries the relay scenarios' traffic without STUN, and answers the
    # Binding flood's 20-byte requests by echoing them.
    if [[ $kind == forwarder ]]; then
        case $mode in
            relay) mode=raw ;;
            binding) mode=echo && set -- "$@" --size 20 ;;
        esac
    fi
    start_server "$kind" "$mode"
    local pin=() json
    [[ -n $GENERATOR_CPUS ]] && pin=(taskset -c "$GENERATOR_CPUS")
    if [[ $TRANSPORT != udp ]]; then
        set -- "$@" --transport "$TRANSPORT"
        [[ $TRANSPORT == tls ]] && set -- "$@" --tls-version "$TLS_VERSION"
    fi
    if json=$(timeout --kill-after=5 240 "${pin[@]}" "$LOADGEN" --mode "$mode" \
        --server "$LISTEN_IP:$SERVER_PORT" --server-pid "$SERVER_PID" \
        --peer "$LISTEN_IP:$PEER_PORT" --user "$USER_NAME" --password "$PASSWORD" \
        --scenario "$scenario" --label "$kind" --duration "$DURATION" --warmup "$WARMUP" \
        --window "$WINDOW" --settle "$SETTLE" "$@" 2>>"$OUT/loadgen.log"); then
        echo "$json" >>"$RESULTS"
        log "  $(summary "$json")"
    else
        echo "{\"scenario\":\"$scenario\",\"label\":\"$kind\",\"failed\":true}" >>"$RESULTS"
        log "  $scenario $kind: FAILED (see $OUT/loadgen.log)"
    fi
    stop_server
}

summary() {
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
keys = ["packets_per_server_cpu_second", "responses_per_server_cpu_second",
        "allocations_per_second", "kib_per_allocation", "p99_us", "loss", "other_cpu_seconds"]
shown = ", ".join(f"{k}={d[k]:.4g}" for k in keys if isinstance(d.get(k), (int, float)))
print(d["scenario"], d["label"] + ":", shown)' "$1"
}

# Alternates KINDS within each repetition so slow drifts (other load, thermal) hit all.
scenario() { # NAME "KINDS" MODE GENERATOR-ARGS...
    local name=$1 kinds=$2
    shift 2
    log "scenario $name"
    for _ in $(seq "$REPS"); do
        for kind in $kinds; do
            run_case "$name" "$kind" "$@"
        done
    done
}

enabled() { [[ ,$ONLY, == *,$1,* ]]; }

# Half of coturn's median saturation rate in the relay-160-100 runs (round trips/s).
half_coturn_rate() {
    python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rates = [d["round_trips_per_second"] for d in map(json.loads, open(sys.argv[1]))
         if d.get("scenario") == "relay-160-100" and d.get("label") == "coturn"
         and not d.get("failed")]
print(int(statistics.median(rates) / 2) if rates else 0)
PY
}

run_all() {
    local extra=""
    grep -q 'pub workers:' src/config.rs && extra=rendez-w2
    if enabled binding; then
        scenario binding "rendez coturn forwarder $extra" binding --clients 8
    fi
    if enabled relay; then
        for size in 160 1200; do
            for allocations in 1 100 1000; do
                local kinds="rendez coturn forwarder"
                ((allocations == 100)) && kinds="$kinds $extra"
                scenario "relay-$size-$allocations" "$kinds" relay \
                    --allocations "$allocations" --size "$size"
            done
        done
    elif enabled latency; then
        # The latency scenario's rate comes from coturn's saturation here.
        scenario relay-160-100 coturn relay --allocations 100 --size 160
    fi
    if enabled churn; then
        scenario churn "rendez coturn $extra" churn --clients 16
    fi
    if enabled memory; then
        scenario memory "rendez coturn" memory --allocations "$MEMORY_ALLOCATIONS" --setup-timeout 120
    fi
    if enabled latency; then
        local rate
        rate=$(half_coturn_rate)
        if ((rate > 0)); then
            scenario latency "rendez coturn" relay --allocations 100 --size 160 --rate "$rate"
        else
            log "latency: no coturn saturation rate measured; skipped"
        fi
    fi
    # TURN over TCP and TLS: one connection per allocation, relay to the peers over UDP.
    # The forwarder has no stream path, so these compare rendez with coturn only.
    for TRANSPORT in tcp tls; do
        enabled "$TRANSPORT" || continue
        for size in 100 1000; do
            for allocations in 1 4; do
                scenario "$TRANSPORT-$size-$allocations" "rendez coturn" relay \
                    --allocations "$allocations" --size "$size"
            done
        done
    done
    TRANSPORT=udp
}

# --- table ---------------------------------------------------------------------------------

print_table() {
    python3 - "$RESULTS" "$OUT/machine.txt" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
from collections import defaultdict

runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = defaultdict(list)
failures = defaultdict(int)
for r in runs:
    if isinstance(r.get("rss_kib_before"), int) and isinstance(r.get("rss_kib_after"), int):
        r["rss_growth_kib"] = r["rss_kib_after"] - r["rss_kib_before"]
        if r.get("scenario") == "churn" and r.get("allocate_successes"):
            r["bytes_kept_per_churned_allocation"] = (
                r["rss_growth_kib"] * 1024 / r["allocate_successes"])
    if r.get("failed"):
        failures[(r["scenario"], r["label"])] += 1
    else:
        by[(r["scenario"], r["label"])].append(r)

def median(scenario, label, key):
    values = [r[key] for r in by[(scenario, label)] if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None

def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"

def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"

rows = [("binding", "Binding responses / server CPU-s", "responses_per_server_cpu_second")]
for size in (160, 1200):
    for n in (1, 100, 1000):
        rows.append((f"relay-{size}-{n}",
                     f"Relay {size} B × {n} alloc: packets / server CPU-s",
                     "packets_per_server_cpu_second"))
for transport in ("tcp", "tls"):
    for size in (100, 1000):
        for n in (1, 4):
            rows.append((f"{transport}-{size}-{n}",
                         f"{transport.upper()} {size} B × {n} alloc: packets / server CPU-s",
                         "packets_per_server_cpu_second"))
rows += [
    ("churn", "Allocations / s", "allocations_per_second"),
    ("churn", "Allocations / server CPU-s", "allocations_per_server_cpu_second"),
    ("churn", "RSS KiB kept after churn (none open)", "rss_growth_kib"),
    ("memory", "RSS KiB per allocation (open)", "kib_per_allocation"),
    ("memory", "RSS KiB per allocation after delete", "kib_per_allocation_after_delete"),
    ("latency", "RTT p50 µs at ½ coturn saturation", "p50_us"),
    ("latency", "RTT p99 µs at ½ coturn saturation", "p99_us"),
]

print("| scenario | rendez | coturn | rendez/coturn | forwarder (ceiling) | rendez/ceiling | rendez workers=2 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for scenario, title, key in rows:
    if not any(by[(scenario, l)] for l in ("rendez", "coturn")):
        continue
    r, c = median(scenario, "rendez", key), median(scenario, "coturn", key)
    f, w2 = median(scenario, "forwarder", key), median(scenario, "rendez-w2", key)
    print(f"| {title} | {fmt(r)} | {fmt(c)} | {ratio(r, c)} | {fmt(f)} | {ratio(r, f)} | {fmt(w2)} |")

print()
print("Details (medians): throughput is relayed packets/s (both directions), Binding")
print("responses/s or allocations/s; CPU-s over the measured window; `other` is CPU time")
print("used by neither the server nor the generator (noise from other processes).")
print()
print("| scenario | server | runs | throughput/s | loss | server socket drops | p50 µs | p99 µs | server CPU-s | generator CPU-s | other CPU-s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
order = []
for r in runs:
    k = (r["scenario"], r["label"])
    if k not in order:
        order.append(k)
for scenario, label in order:
    if scenario == "memory":
        continue
    n = len(by[(scenario, label)])
    bad = failures[(scenario, label)]
    runs_text = f"{n}" + (f" (+{bad} failed)" if bad else "")
    tput = median(scenario, label, "per_second")
    loss = median(scenario, label, "loss")
    loss_text = "–" if loss is None else f"{loss:.2%}"
    print(f"| {scenario} | {label} | {runs_text} | {fmt(tput)} | {loss_text} | "
          f"{fmt(median(scenario, label, 'server_socket_drops'))} | "
          f"{fmt(median(scenario, label, 'p50_us') or median(scenario, label, 'allocate_p50_us'))} | "
          f"{fmt(median(scenario, label, 'p99_us') or median(scenario, label, 'allocate_p99_us'))} | "
          f"{fmt(median(scenario, label, 'server_cpu_seconds'))} | "
          f"{fmt(median(scenario, label, 'generator_cpu_seconds'))} | "
          f"{fmt(median(scenario, label, 'other_cpu_seconds'))} |")
memory_rows = [k for k in order if k[0] in ("memory", "churn")]
if memory_rows:
    print()
    print("Server memory (VmRSS, medians): `memory` opens the allocations, reads, deletes them all")
    print("and reads again; `churn` reads before the first and after the last cycle, when no")
    print("allocation is open.")
    print()
    print("| scenario | server | runs | RSS before KiB | RSS with all open | RSS after delete | KiB / allocation | KiB / allocation after delete | B kept / churned allocation | allocations/s | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, label in memory_rows:
        m = lambda key: median(scenario, label, key)
        failed = m("setup_failed") if scenario == "memory" else None
        print(f"| {scenario} | {label} | {len(by[(scenario, label)])} | {fmt(m('rss_kib_before'))} | "
              f"{fmt(m('rss_kib_during'))} | {fmt(m('rss_kib_after'))} | {fmt(m('kib_per_allocation'))} | "
              f"{fmt(m('kib_per_allocation_after_delete'))} | {fmt(m('bytes_kept_per_churned_allocation'))} | "
              f"{fmt(m('setup_allocations_per_second') or m('allocations_per_second'))} | {fmt(failed)} |")
print()
print("Machine:")
print()
print("```")
print(open(sys.argv[2]).read().rstrip())
print("```")
PY
}

main() {
    ensure_coturn
    build
    make_certificate
    raise_fd_limit_or_warn
    setup_pinning
    describe_machine <<EOF
openssl: $(openssl version 2>/dev/null)
settings: reps=$REPS duration=${DURATION}s warmup=${WARMUP}s window=$WINDOW memory-allocations=$MEMORY_ALLOCATIONS pin=${SERVER_CPUS:-no} tls-version=$TLS_VERSION
EOF
    log "results in $OUT"
    local started=$SECONDS
    run_all
    log "done in $((SECONDS - started)) s"
    print_table
}

main
