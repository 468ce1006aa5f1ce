#!/usr/bin/env bash
# Measures issue 15's XDP fast path: coturn, rendez on its sockets path and rendez with
# `[xdp]`, in alternating runs, with one load generator (rendez-loadgen), relaying ChannelData
# on bound channels between two network namespaces; prints a table of medians (packets per
# server-side CPU-second and the ratios). See benches/README.md, "The XDP fast path".
#
#   benches/xdp/compare.sh            # full run: 3 reps × 4 loads × 3 servers, about 5 minutes
#   benches/xdp/compare.sh --quick    # smoke run: 1 rep, saturation and 50k pkt/s, under 2 min
#
# Options (or environment variables REPS, DURATION, WARMUP, IDLE, RATES, WINDOW,
# ALLOCATIONS, SIZE, SERVERS, OUT, QUICK=1, BUILD=0, PIN=0, RENDEZ):
#   --reps N           runs per server and load (default 3; quick 1)
#   --duration S       measured seconds per run (default 3; quick 1)
#   --warmup S         unmeasured seconds of traffic first (default 0.5; quick 0.3)
#   --idle S           seconds of the idle baseline before each run (default: --duration)
#   --rates LIST       fixed offered loads in relayed packets/s, comma-separated; 0 is
#                      saturation (default 0,20000,50000,100000; quick 0,50000)
#   --window N         packets in flight at saturation (default 128)
#   --allocations N    allocations, one bound channel each (default 4)
#   --size B           ChannelData payload bytes (default 100)
#   --servers LIST     any of coturn,rendez-sockets,rendez-xdp (default: all three)
#   --out DIR          where results.jsonl, table.md and the logs go (default: a new /tmp dir)
#   --no-build         use target/release/rendez and rendez-loadgen as they are
#   --rendez PATH      the rendez binary to run (implies nothing is built for it)
#   --no-pin           do not pin the server side to the last CPU and the world to the others
#
# Topology: two network namespaces made here with names unique to this run, joined by one
# veth pair and nothing else (no route out, so nothing can leave them):
#
#   [ rxb-world-PID: rendez-loadgen ]  xwPID ══ veth ══ xsPID  [ rxb-srv-PID: TURN server ]
#     clients 198.18.0.2, peers 198.18.0.3                      198.18.0.1 (listen and relay)
#
# Client → server → peer → server → client all cross the pair, as a WebRTC call through a
# TURN server does. Addresses are from 198.18.0.0/15 (set aside for benchmarks, RFC 2544).
# Why this shape: on a veth the receive processing of a packet runs in softirq in whatever
# context handles it, so without care the server's receive work (and all XDP work) would be
# charged to the generator that sent the packet, and XDP would look free. Here both ends of
# the pair have GRO on (so each has a NAPI instance and a receive ring), TSO off (so a veth
# hands every datagram to its peer's NAPI, not only those it could aggregate) and threaded
# NAPI, so each interface's receive processing — the IP/UDP stack up to the socket, or the
# XDP program and its XDP_TX — runs in its own kernel thread `napi/IF-ID`. The server side's
# CPU is the server process (all threads) plus the napi threads of the server's interface;
# the world's napi threads count with the generator. The world end also carries an XDP_PASS
# program (benches/xdp/xdp_pass.c, when clang is there): the issue's rule for XDP_TX into a
# veth. On a plain veth pair a packet a socket built is copied into an XDP buffer before a
# program can see it: that copy is part of what rendez-xdp's napi thread is charged with,
# in this topology and not on a real NIC.
#
# Everything is bounded (the generator's own limits and `timeout`); on every exit a trap
# stops the servers and generator it started and deletes both namespaces (and with them
# the veth pair and the programs on it).
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${REPS:-}
DURATION=${DURATION:-}
WARMUP=${WARMUP:-}
IDLE=${IDLE:-}
RATES=${RATES:-}
WINDOW=${WINDOW:-128}
ALLOCATIONS=${ALLOCATIONS:-4}
SIZE=${SIZE:-100}
SERVERS=${SERVERS:-coturn,rendez-sockets,rendez-xdp}
OUT=${OUT:-}
BUILD=${BUILD:-1}
PIN=${PIN:-1}
QUICK=${QUICK:-0}
RENDEZ=${RENDEZ:-}

usage() { awk 'NR > 1 && /^set -euo/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --idle) IDLE=$2; shift ;;
        --rates) RATES=$2; shift ;;
        --window) WINDOW=$2; shift ;;
        --allocations) ALLOCATIONS=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --rendez) RENDEZ=$2; shift ;;
        --no-pin) PIN=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    REPS=${REPS:-1} DURATION=${DURATION:-1} WARMUP=${WARMUP:-0.3} RATES=${RATES:-0,50000}
fi
REPS=${REPS:-3} DURATION=${DURATION:-3} WARMUP=${WARMUP:-0.5}
RATES=${RATES:-0,20000,50000,100000} IDLE=${IDLE:-$DURATION}

# shellcheck source=benches/lib.sh
source benches/lib.sh
fail_usage() { echo "$1 (see --help)" >&2; exit 2; }
for value in "$REPS" "$WINDOW" "$ALLOCATIONS" "$SIZE"; do
    if ! is_uint "$value" || ((value == 0)); then
        fail_usage "--reps, --window, --allocations and --size take positive integers"
    fi
done
for value in $DURATION $WARMUP $IDLE; do
    if ! [[ $value =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v v="$value" 'BEGIN { exit !(v <= 60) }'; then
        fail_usage "--duration, --warmup and --idle take 0 to 60 seconds"
    fi
done
for rate in ${RATES//,/ }; do
    if ! is_uint "$rate" || ((rate > 2000000)); then
        fail_usage "--rates takes packet rates from 0 to 2000000"
    fi
done
for kind in ${SERVERS//,/ }; do
    [[ $kind =~ ^(coturn|rendez-sockets|rendez-xdp)$ ]] || { echo "unknown server in --servers: $kind" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "run as root: this makes network namespaces and a veth pair" >&2; exit 1; }

out=$OUT
make_out_dir rendez-xdp-bench
OUT=$out RESULTS=$results

# --- names and addresses, unique to this run ----------------------------------------------

ID=$$
NS_SERVER=rxb-srv-$ID
NS_WORLD=rxb-world-$ID
# Kernel thread names hold 15 characters: "napi/xs<PID>-" must stay recognisable.
IF_SERVER=xs$ID
IF_WORLD=xw$ID
SERVER_IP=198.18.0.1
CLIENT_IP=198.18.0.2
PEER_IP=198.18.0.3
PORT=3478
METRICS_PORT=9478
RELAY_MIN=10000
RELAY_MAX=29999
USER_NAME=bench
PASSWORD=bench
REALM=bench

BIN=target/release
LOADGEN=$BIN/rendez-loadgen
SERVER_PID=""
SERVER_NAPI=() WORLD_NAPI=()
# Why rendez-xdp cannot run here (empty: it can); once set, its runs are skipped.
XDP_UNAVAILABLE=""
WORLD_XDP=none

log() { printf '%s\n' "$*" >&2; }
in_server() { ip netns exec "$NS_SERVER" "$@"; }
in_world() { ip netns exec "$NS_WORLD" "$@"; }

# --- cleanup: every exit path ------------------------------------------------------------

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
    stop_server
    local ns pid
    for ns in "$NS_SERVER" "$NS_WORLD"; do
        [[ -e /run/netns/$ns ]] || continue
        # Whatever still runs in our namespaces was started by this script.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            stop_pid "$pid"
        done
        ip netns del "$ns" 2>/dev/null || log "warning: could not delete namespace $ns"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- setup -------------------------------------------------------------------------------

ensure_tools() {
    local missing=()
    for tool in ip ethtool python3 curl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        log "missing: ${missing[*]} (apt-get install -y iproute2 ethtool python3 curl)"
        exit 1
    fi
    if [[ ,$SERVERS, == *,coturn,* ]] && ! command -v turnserver >/dev/null; then
        log "coturn is missing: installing Debian's package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq coturn >/dev/null || {
            apt-get update -qq && apt-get install -y -qq coturn >/dev/null
        }
    fi
}

has_xdp_feature() { grep -qE '^xdp[[:space:]]*=' Cargo.toml; }

build() {
    if ((BUILD)); then
        local features=loadgen
        has_xdp_feature && features=loadgen,xdp
        log "building rendez and rendez-loadgen (release, features $features)"
        cargo build --release --quiet --features "$features" --bin rendez --bin rendez-loadgen
    fi
    # A copy, so a build elsewhere in the tree during the run cannot swap the binary.
    mkdir -p "$OUT/bin"
    cp "${RENDEZ:-$BIN/rendez}" "$OUT/bin/rendez"
    cp "$LOADGEN" "$OUT/bin/rendez-loadgen"
    RENDEZ_BIN=$OUT/bin/rendez
    LOADGEN=$OUT/bin/rendez-loadgen
    if [[ ,$SERVERS, == *,rendez-xdp,* ]] && ! has_xdp_feature && [[ -z $RENDEZ ]]; then
        XDP_UNAVAILABLE="this tree's Cargo.toml has no \`xdp\` feature (the fast path is not merged)"
    fi
}

# The world end's XDP_PASS program; without clang the world relies on GRO alone.
compile_world_program() {
    if ! command -v clang >/dev/null; then
        log "clang is missing: the world end gets no XDP_PASS program (GRO still gives it NAPI)"
        return
    fi
    # <linux/bpf.h> wants <asm/types.h>, which Debian keeps under the multiarch directory.
    local arch_include
    arch_include=/usr/include/$(uname -m)-linux-gnu
    if clang -O2 -g -target bpf -I"$arch_include" -c benches/xdp/xdp_pass.c \
        -o "$OUT/xdp_pass.o" 2>"$OUT/clang.log"; then
        WORLD_XDP=pass
    else
        log "could not compile benches/xdp/xdp_pass.c (see $OUT/clang.log): no XDP_PASS on the world end"
    fi
}

make_topology() {
    log "topology: $NS_WORLD ($IF_WORLD) <-> $NS_SERVER ($IF_SERVER)"
    ip netns add "$NS_SERVER"
    ip netns add "$NS_WORLD"
    ip link add "$IF_SERVER" netns "$NS_SERVER" type veth peer name "$IF_WORLD" netns "$NS_WORLD"
    ip -n "$NS_SERVER" addr add "$SERVER_IP/24" dev "$IF_SERVER"
    ip -n "$NS_WORLD" addr add "$CLIENT_IP/24" dev "$IF_WORLD"
    ip -n "$NS_WORLD" addr add "$PEER_IP/24" dev "$IF_WORLD"
    local ns dev
    for ns in "$NS_SERVER" "$NS_WORLD"; do ip -n "$ns" link set lo up; done
    for pair in "$NS_SERVER:$IF_SERVER" "$NS_WORLD:$IF_WORLD"; do
        ns=${pair%%:*} dev=${pair#*:}
        # GRO gives the veth a NAPI instance (and a ring for XDP frames from its peer);
        # threaded NAPI runs that instance in its own kernel thread, whose CPU time we read.
        # A veth hands a packet to its peer's NAPI only if the peer has an XDP program or
        # the packet could be aggregated, which for a socket's datagram means: the sending
        # veth has no TSO. TSO is TCP's (these are 100-byte UDP datagrams), so with it off
        # every packet in both directions is received in a napi thread, XDP or not.
        # (A veth adds its NAPI instance when it is up, and `threaded` needs one.)
        ip -n "$ns" link set "$dev" up
        ip netns exec "$ns" ethtool -K "$dev" gro on tso off >/dev/null
        ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$dev/threaded"
    done
    # bpf_fib_lookup, which the fast path uses to find the next hop, answers only with
    # forwarding on (rendez warns and keeps channels on sockets otherwise). Set in the
    # server namespace for every server alike; it changes nothing for traffic the server's
    # own sockets take in and send.
    ip netns exec "$NS_SERVER" sysctl -qw net.ipv4.conf.all.forwarding=1 \
        "net.ipv4.conf.$IF_SERVER.forwarding=1"
    if [[ $WORLD_XDP == pass ]]; then
        ip -n "$NS_WORLD" link set dev "$IF_WORLD" xdpdrv obj "$OUT/xdp_pass.o" sec xdp
    fi
    # Resolve both neighbours once, so the first packets of a run do not wait for ARP.
    in_world ip neigh replace "$SERVER_IP" lladdr "$(mac_of "$NS_SERVER" "$IF_SERVER")" dev "$IF_WORLD"
    for ip_address in "$CLIENT_IP" "$PEER_IP"; do
        in_server ip neigh replace "$ip_address" lladdr "$(mac_of "$NS_WORLD" "$IF_WORLD")" dev "$IF_SERVER"
    done
}

mac_of() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }

# PIDs of the NAPI kernel threads of interface $1 ("napi/IF-ID", cut to 15 characters).
napi_threads() {
    local comm_prefix="napi/$1-" dir comm
    for dir in /proc/[0-9]*; do
        comm=$(cat "$dir/comm" 2>/dev/null) || continue
        [[ $comm == "$comm_prefix"* ]] && echo "${dir#/proc/}"
    done
    return 0
}

# The interfaces' NAPI threads, looked up again before each run (attaching or detaching a
# program may re-create an instance), and pinned like the side they serve.
find_napi_threads() {
    mapfile -t SERVER_NAPI < <(napi_threads "$IF_SERVER")
    mapfile -t WORLD_NAPI < <(napi_threads "$IF_WORLD")
    if ((${#SERVER_NAPI[@]} == 0 || ${#WORLD_NAPI[@]} == 0)); then
        log "no napi/$IF_SERVER-* or napi/$IF_WORLD-* kernel thread: threaded NAPI on veth is needed to see the receive processing (Linux 5.12+)"
        exit 1
    fi
    [[ -n $SERVER_CPUS ]] || return 0
    local pid
    for pid in "${SERVER_NAPI[@]}"; do taskset -pc "$SERVER_CPUS" "$pid" >/dev/null; done
    for pid in "${WORLD_NAPI[@]}"; do taskset -pc "$GENERATOR_CPUS" "$pid" >/dev/null; done
}

# Task times exclude steal when the kernel takes it off the run-queue clock
# (CONFIG_PARAVIRT_TIME_ACCOUNTING, not turned off with no-steal-acc); the table then only
# reports steal. Otherwise it scales task CPU times by busy / (busy + steal).
steal_in_task_times() {
    local config
    config=$(zcat /proc/config.gz 2>/dev/null || true)
    if grep -q '^CONFIG_PARAVIRT_TIME_ACCOUNTING=y' <<<"$config" &&
        ! grep -qw no-steal-acc /proc/cmdline; then
        echo false
    else
        echo true
    fi
}

# --- servers -------------------------------------------------------------------------------

write_rendez_config() { # KIND FILE
    local xdp_section=""
    if [[ $1 == rendez-xdp ]]; then
        printf -v xdp_section '[xdp]\ninterface = "%s"\nmode = "native"' "$IF_SERVER"
    fi
    cat >"$2" <<EOF
realm = "$REALM"
listen = ["$SERVER_IP:$PORT"]
relay-ip = "$SERVER_IP"
relay-ports = "$RELAY_MIN-$RELAY_MAX"
log-level = "info"
workers = 1

[signal]
enabled = false

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[auth]
[[auth.users]]
name = "$USER_NAME"
password = "$PASSWORD"

[peers]
allow = ["198.18.0.0/15"]

$(limits_section)

$xdp_section
EOF
}

# Started with `ip netns exec … &` directly (not through a shell function, which would put
# a subshell between $! and the server), so SERVER_PID is the server itself.
start_server() { # KIND
    local kind=$1 pin=()
    [[ -n $SERVER_CPUS ]] && pin=(taskset -c "$SERVER_CPUS")
    case $kind in
        rendez-*)
            write_rendez_config "$kind" "$OUT/$kind.toml"
            ip netns exec "$NS_SERVER" env "${clean_env[@]}" "${pin[@]}" "$RENDEZ_BIN" serve --config "$OUT/$kind.toml" \
                >>"$OUT/$kind.log" 2>&1 &
            ;;
        coturn)
            # -n: no config file; foreground; one relay thread, like rendez's one worker.
            ip netns exec "$NS_SERVER" "${pin[@]}" turnserver -n --no-cli --no-tls --no-dtls \
                --listening-ip "$SERVER_IP" --listening-port "$PORT" \
                --relay-ip "$SERVER_IP" --min-port "$RELAY_MIN" --max-port "$RELAY_MAX" \
                --lt-cred-mech --user "$USER_NAME:$PASSWORD" --realm "$REALM" \
                --relay-threads 1 --pidfile "$OUT/turnserver.pid" \
                --log-file "$OUT/coturn.log" --no-stdout-log --simple-log \
                >>"$OUT/coturn.out" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
}

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

# Waits (at most 10 s) for rendez's metrics; prints them.
scrape_metrics() {
    local attempt
    for attempt in $(seq 1 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        if in_server curl -sf --max-time 1 "http://127.0.0.1:$METRICS_PORT/metrics"; then
            return 0
        fi
        ((attempt < 100)) && sleep 0.1
    done
    return 1
}

# rendez-xdp: its program must be attached in native mode, or the runs are not XDP runs.
check_xdp_attached() {
    local metrics link
    if ! metrics=$(scrape_metrics); then
        local why
        # The line that names the problem: a config error names the key, e.g. "unknown field
        # `xdp`" from a binary without the fast path.
        why=$({ grep -m1 -i 'unknown field' "$OUT/rendez-xdp.log" ||
            grep -m1 -iE 'xdp|error' "$OUT/rendez-xdp.log"; } | cut -c1-200)
        XDP_UNAVAILABLE="rendez with [xdp] did not start: ${why:-see $OUT/rendez-xdp.log}"
        return 1
    fi
    link=$(ip -n "$NS_SERVER" link show dev "$IF_SERVER")
    if [[ $link != *" xdp "* ]] && ! grep -qE '^rendez_xdp_attached(\{[^}]*\})? 1' <<<"$metrics"; then
        XDP_UNAVAILABLE="no XDP program attached to $IF_SERVER in native mode (rendez_xdp_attached absent or 0; rendez's log: $(grep -m1 -i xdp "$OUT/rendez-xdp.log" || echo nothing about xdp))"
        return 1
    fi
}

# Sum of the samples of the metric families matching $2 in the exposition text $1.
metric_sum() {
    awk -v pattern="$2" '$0 !~ /^#/ && $1 ~ pattern { total += $NF } END { printf "%.0f", total }' <<<"$1"
}

# Datagrams the server namespace's UDP layer took in and sent out (its own SNMP MIB):
# the sockets path moves one of each per relayed packet, the XDP path none.
udp_counters() {
    awk '/^Udp: [0-9]/ { print $2, $5 }' "/proc/$SERVER_PID/net/snmp" 2>/dev/null || echo "0 0"
}

# --- CPU of the idle topology ------------------------------------------------------------

ticks_of() { # PID...: utime + stime of these tasks, in clock ticks
    local pid total=0 stat fields
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# The same topology and server, no traffic, for IDLE seconds: what the server side and the
# machine use anyway; the table subtracts it (as a rate) from the run that follows.
measure_idle() {
    local hz server0 napi0 machine0 started ended
    hz=$(getconf CLK_TCK)
    server0=$(ticks_of "$SERVER_PID") napi0=$(ticks_of "${SERVER_NAPI[@]}") machine0=$(machine_busy_ticks)
    started=$(date +%s.%N)
    sleep "$IDLE"
    ended=$(date +%s.%N)
    python3 -c '
import json, sys
hz, s0, s1, n0, n1, m0, m1, t0, t1 = map(float, sys.argv[1:])
print(json.dumps({"idle_seconds": t1 - t0, "idle_server_cpu_seconds": (s1 - s0) / hz,
                  "idle_server_threads_cpu_seconds": (n1 - n0) / hz,
                  "idle_machine_cpu_seconds": (m1 - m0) / hz}))' \
        "$hz" "$server0" "$(ticks_of "$SERVER_PID")" "$napi0" "$(ticks_of "${SERVER_NAPI[@]}")" \
        "$machine0" "$(machine_busy_ticks)" "$started" "$ended"
}

# --- runs ----------------------------------------------------------------------------------

load_name() { if (($1 == 0)); then echo saturation; else echo "$1"; fi; }

# One run: fresh server, idle baseline, the generator, counters before and after, stop.
run_case() { # KIND RATE
    local kind=$1 rate=$2 load json idle metrics_before="" metrics_after="" udp_before udp_after
    load=$(load_name "$rate")
    if [[ $kind == rendez-xdp && -n $XDP_UNAVAILABLE ]]; then
        echo "{\"load\":\"$load\",\"label\":\"$kind\",\"unavailable\":$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$XDP_UNAVAILABLE")}" >>"$RESULTS"
        return
    fi
    start_server "$kind"
    if [[ $kind == rendez-* ]]; then
        metrics_before=$(scrape_metrics) || metrics_before=""
        if [[ $kind == rendez-xdp ]] && ! check_xdp_attached; then
            log "  rendez-xdp unavailable: $XDP_UNAVAILABLE"
            stop_server
            run_case "$kind" "$rate"
            return
        fi
    else
        sleep 1 # coturn has no readiness signal here; the generator also waits for a Binding
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "{\"load\":\"$load\",\"label\":\"$kind\",\"failed\":true}" >>"$RESULTS"
        log "  $load $kind: the server exited at start (see $OUT/$kind.log)"
        SERVER_PID=""
        return
    fi
    find_napi_threads
    idle=$(measure_idle)
    udp_before=$(udp_counters)
    # The generator's rate counts what the clients send; one round trip is two relayed
    # packets (client → peer, peer → client), so an offered load of R relayed packets/s
    # is R/2 ChannelData messages/s from the clients.
    local generator=(--rate $((rate / 2)))
    ((rate == 0)) && generator=(--rate 0 --window "$WINDOW")
    local pin=() server_side=() client_side=() pid
    [[ -n $GENERATOR_CPUS ]] && pin=(taskset -c "$GENERATOR_CPUS")
    for pid in "${SERVER_NAPI[@]}"; do server_side+=(--server-side-pid "$pid"); done
    for pid in "${WORLD_NAPI[@]}"; do client_side+=(--client-side-pid "$pid"); done
    if json=$(timeout --kill-after=5 120 ip netns exec "$NS_WORLD" "${pin[@]}" "$LOADGEN" \
        --mode relay --server "$SERVER_IP:$PORT" --server-pid "$SERVER_PID" \
        "${server_side[@]}" "${client_side[@]}" --local-ip "$CLIENT_IP" --peer-ip "$PEER_IP" \
        --user "$USER_NAME" --password "$PASSWORD" --allocations "$ALLOCATIONS" --size "$SIZE" \
        --scenario "relay-$SIZE-$ALLOCATIONS" --label "$kind" --duration "$DURATION" \
        --warmup "$WARMUP" --setup-timeout 20 "${generator[@]}" 2>>"$OUT/loadgen.log"); then
        udp_after=$(udp_counters)
        [[ $kind == rendez-* ]] && metrics_after=$(scrape_metrics || true)
        json=$(python3 -c '
import json, sys
run = json.loads(sys.argv[1])
run.update(json.loads(sys.argv[2]))
udp_in0, udp_out0 = map(int, sys.argv[3].split())
udp_in1, udp_out1 = map(int, sys.argv[4].split())
run.update({"load": sys.argv[5], "offered_pps": int(sys.argv[6]),
            "server_udp_in": udp_in1 - udp_in0, "server_udp_out": udp_out1 - udp_out0})
if sys.argv[7] == "rendez":
    run["rendez_relayed_packets"] = int(sys.argv[9]) - int(sys.argv[8])
    run["rendez_xdp_packets"] = int(sys.argv[11]) - int(sys.argv[10])
print(json.dumps(run))' "$json" "$idle" "$udp_before" "$udp_after" "$load" "$rate" \
            "${kind%%-*}" "$(metric_sum "$metrics_before" '^rendez_relayed_packets_total')" \
            "$(metric_sum "$metrics_after" '^rendez_relayed_packets_total')" \
            "$(metric_sum "$metrics_before" '^rendez_xdp_.*packets')" \
            "$(metric_sum "$metrics_after" '^rendez_xdp_.*packets')")
        echo "$json" >>"$RESULTS"
        log "  $(summary "$json")"
    else
        echo "{\"load\":\"$load\",\"label\":\"$kind\",\"failed\":true}" >>"$RESULTS"
        log "  $load $kind: FAILED (see $OUT/loadgen.log and $OUT/$kind.log)"
    fi
    stop_server
}

summary() {
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
side = d.get("server_side_cpu_seconds") or 0
relayed = d["window_received"] * 2
per_cpu = f"{relayed / side:,.0f}" if side > 0 else "–"
load, label, pps, loss = d["load"], d["label"], d.get("relayed_pps") or 0, d.get("loss") or 0
udp_in = d["server_udp_in"]
print(f"{load:>10} {label:<15} relayed {pps:9.0f}/s  server side {side:.2f} CPU-s"
      f" ({per_cpu} pkt/CPU-s before the idle baseline)  loss {loss:.2%}"
      f"  datagrams into server sockets {udp_in}")' "$1"
}

run_all() {
    local rep rate kind
    for rep in $(seq 1 "$REPS"); do
        for rate in ${RATES//,/ }; do
            log "rep $rep, load $(load_name "$rate")"
            # Alternating within each repetition, so slow drifts (other load) hit all.
            for kind in ${SERVERS//,/ }; do
                run_case "$kind" "$rate"
            done
        done
    done
}

main() {
    ensure_tools
    build
    compile_world_program
    setup_pinning
    make_topology
    find_napi_threads
    describe_machine <<EOF
topology: $NS_WORLD/$IF_WORLD <-> $NS_SERVER/$IF_SERVER, GRO on, TSO off and threaded NAPI on both ends, world XDP: $WORLD_XDP
napi threads: server $IF_SERVER: ${SERVER_NAPI[*]}; world $IF_WORLD: ${WORLD_NAPI[*]}
steal in task times: $(steal_in_task_times)
settings: reps=$REPS duration=${DURATION}s warmup=${WARMUP}s idle=${IDLE}s rates=$RATES window=$WINDOW allocations=$ALLOCATIONS size=$SIZE pin=${SERVER_CPUS:-no}
EOF
    local started=$SECONDS
    run_all
    log "done in $((SECONDS - started)) s"
    python3 benches/xdp/table.py "$RESULTS" "$OUT/machine.txt" "$(steal_in_task_times)" | tee "$OUT/table.md"
}

main; exit  # on one line: bash reads a script as it runs, so an edit made meanwhile cannot break the end
