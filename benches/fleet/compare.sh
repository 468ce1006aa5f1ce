#!/usr/bin/env bash
# Rooms across nodes: what `[cluster]` costs. Three topologies, alternating within one run,
# the same client (fleet.mjs), medians over repetitions:
#   A  one rendez node, no [cluster] (rooms in the node's memory)
#   B  the same node with [cluster] on a local redis-server
#   C  three nodes on one redis-server; every room has two participants on each node
#
#   benches/fleet/compare.sh            # 300 rooms of 6 (1800 participants), 3 reps: ~6 min
#   benches/fleet/compare.sh --quick    # 50 rooms, 1 rep, 3 s phases: under a minute
#   benches/fleet/compare.sh --help
#
# Everything runs on 127.0.0.1; every process this script starts is stopped on exit.
# Results go to a fresh /tmp/rendez-fleet-bench.* directory (or --out DIR): results.jsonl (one
# line per run), table.md, the configs and every process's log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# is_uint, raise_fd_limit, make_out_dir, stop_pid, clean_env, wait_listening
source "$here/../lib.sh"

rooms=300
room_size=6
reps=3
join_rate=300
rate=1000
duration=10
burst=1800
only="A B C"
base_port=18300
out=""
build=1
rendez_bin=""

usage() {
  cat <<EOF
usage: $0 [options]
  --rooms N        rooms per run (default $rooms; participants = rooms × room size, at most 20000)
  --room-size N    participants per room (default $room_size; a multiple of 3 spreads evenly in C)
  --reps N         alternating repetitions of each topology (default $reps)
  --join-rate R    joins sent per second (default $join_rate)
  --rate R         chat, then signal, messages offered per second in all (default $rate)
  --duration S     seconds of each of the chat and signal phases (default $duration)
  --burst N        signals sent at once after the paced phases, one per participant at most
                   (default $burst; 0: none)
  --quick          --rooms 50 --reps 1 --duration 3 --burst 300
  --only LIST      topologies, e.g. "A C" (default "$only")
  --base-port P    ports P.. P+19 on 127.0.0.1: signal, metrics, STUN and redis (default $base_port)
  --rendez PATH    use this rendez binary instead of building target/release/rendez
  --no-build       do not run cargo build (use the existing target/release/rendez)
  --out DIR        write results here (default: a fresh /tmp/rendez-fleet-bench.XXXXXX)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --rooms) rooms=$2; shift 2 ;;
    --room-size) room_size=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --join-rate) join_rate=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --burst) burst=$2; shift 2 ;;
    --quick) rooms=50; reps=1; duration=3; burst=300; shift ;;
    --only) only=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    --rendez) rendez_bin=$2; build=0; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for v in rooms room_size reps join_rate rate duration burst base_port; do
  is_uint "${!v}" || { echo "--${v//_/-} must be a whole number" >&2; exit 2; }
done
participants=$((rooms * room_size))
[ "$participants" -ge 2 ] && [ "$participants" -le 20000 ] \
  || { echo "--rooms × --room-size must be 2..20000" >&2; exit 2; }
[ "$reps" -ge 1 ] && [ "$reps" -le 20 ] || { echo "--reps must be 1..20" >&2; exit 2; }
[ "$duration" -ge 1 ] && [ "$duration" -le 60 ] || { echo "--duration must be 1..60" >&2; exit 2; }
[ "$base_port" -ge 1024 ] && [ "$base_port" -le 65000 ] || { echo "--base-port must be 1024..65000" >&2; exit 2; }
for t in $only; do
  case "$t" in A|B|C) ;; *) echo "--only: unknown topology $t (A, B or C)" >&2; exit 2 ;; esac
done

for tool in node timeout ss; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
case " $only " in
  *" B "*|*" C "*)
    for tool in redis-server redis-cli; do
      command -v "$tool" >/dev/null || { echo "$tool is required for topologies B and C (apt-get install redis-server)" >&2; exit 1; }
    done ;;
esac

# Each node holds one socket per participant it serves, the client all of them.
raise_fd_limit $((participants + 512)) "lower --rooms"

make_out_dir rendez-fleet-bench

# --- everything started here is stopped on exit -----------------------------------------------
running=()     # pids of the servers running now
client_pid=""  # the client (its `timeout` wrapper) running now, if any
stop_all() {
  # Nodes first (each tells Redis it leaves), redis-server last.
  for ((k = ${#running[@]} - 1; k >= 0; k--)); do stop_pid "${running[k]}"; done
  running=()
}
cleanup() {
  if [ -n "$client_pid" ]; then stop_pid "$client_pid"; fi
  stop_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: node i (0..2) signals on base+i, metrics on base+5+i, STUN/TURN on base+10+i;
# redis-server on base+15.
signal_port() { echo $((base_port + $1)); }
metrics_port() { echo $((base_port + 5 + $1)); }
turn_port() { echo $((base_port + 10 + $1)); }
redis_port=$((base_port + 15))
for i in 0 1 2; do
  for p in "$(signal_port "$i")" "$(metrics_port "$i")" "$(turn_port "$i")"; do
    if ss -Hltn "sport = :$p" | grep -q . || ss -Hlun "sport = :$p" | grep -q .; then
      echo "port $p on this host is in use; pick others with --base-port" >&2; exit 1
    fi
  done
done
if ss -Hltn "sport = :$redis_port" | grep -q .; then
  echo "port $redis_port on this host is in use; pick others with --base-port" >&2; exit 1
fi

# --- build ---------------------------------------------------------------------------------------
if [ -z "$rendez_bin" ]; then
  if [ "$build" = 1 ]; then
    echo "building rendez (release)…"
    (cd "$repo" && flock /tmp/rendez-cargo.lock cargo build --release --bin rendez) \
      >"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
  fi
  rendez_bin="${CARGO_TARGET_DIR:-$repo/target}/release/rendez"
fi
[ -x "$rendez_bin" ] || { echo "no rendez binary at $rendez_bin" >&2; exit 1; }
rendez_what="rendez $(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?')"
[ "$build" = 1 ] || rendez_what="rendez at $rendez_bin"

if [ ! -f "$here/node_modules/ws/package.json" ]; then
  echo "installing the ws package (npm ci)…"
  (cd "$here" && npm ci --no-audit --no-fund) >"$out/npm.log" 2>&1 \
    || { tail -30 "$out/npm.log" >&2; exit 1; }
fi

# --- configuration -------------------------------------------------------------------------------
# Limits raised so every participant, all from 127.0.0.1, is admitted ([connections] and
# [signal] rooms-per-ip count per address); messages-per-second is far above what one
# participant sends (rate / participants), so it never delays a measured message.
limit=$((participants + 100))
node_config() { # INDEX CLUSTERED
  local i=$1 clustered=$2 first_relay=$((40000 + $1 * 1000))
  cat <<EOF
# Generated by benches/fleet/compare.sh: loopback only, limits raised for one client IP.
realm = "bench"
listen = ["127.0.0.1:$(turn_port "$i")"]
relay-ip = "127.0.0.1"
relay-ports = "$first_relay-$((first_relay + 999))"
workers = 1
log-level = "warn"

[auth]
secrets = ["fleet-bench-secret-not-for-production"]

[connections]
max = $limit
max-per-ip = $limit

[signal]
listen = "127.0.0.1:$(signal_port "$i")"
room-size = $room_size
rooms-per-ip = $limit
messages-per-second = 100

[metrics]
listen = "127.0.0.1:$(metrics_port "$i")"
EOF
  if [ "$clustered" = 1 ]; then
    printf '\n[cluster]\nredis = "redis://127.0.0.1:%s/0"\n' "$redis_port"
  fi
}



# Outer bound for one client run: its own deadlines add up to less.
client_timeout=$((180 + 3 * duration))

run_one() { # TOPOLOGY REP
  local topo=$1 rep=$2 nodes clustered redis_pid="" urls="" pids="" metrics="" i pid log
  case "$topo" in
    A) nodes=1; clustered=0 ;;
    B) nodes=1; clustered=1 ;;
    C) nodes=3; clustered=1 ;;
  esac
  if [ "$clustered" = 1 ]; then
    ran_redis=1
    mkdir -p "$out/redis-$topo-$rep"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --protected-mode no --dir "$out/redis-$topo-$rep" >"$out/redis-$topo-$rep.log" 2>&1 &
    redis_pid=$!
    running+=("$redis_pid")
    wait_listening "$redis_pid" "$redis_port" "$out/redis-$topo-$rep.log" || { stop_all; return 1; }
  fi
  for ((i = 0; i < nodes; i++)); do
    node_config "$i" "$clustered" >"$out/node-$topo-$i.toml"
    log="$out/node-$topo-$rep-$i.log"
    env "${clean_env[@]}" "$rendez_bin" serve --config "$out/node-$topo-$i.toml" >"$log" 2>&1 &
    pid=$!
    running+=("$pid")
    wait_listening "$pid" "$(signal_port "$i")" "$log" || { stop_all; return 1; }
    urls+="${urls:+,}ws://127.0.0.1:$(signal_port "$i")/ws"
    pids+="${pids:+,}$pid"
    metrics+="${metrics:+,}127.0.0.1:$(metrics_port "$i")"
  done
  # Let the servers finish starting before anything is measured. A clustered node also asks
  # Redis for a snapshot of each of its rooms once, three heartbeats (6 s by default) after
  # it connects (the end of its restore after an outage, see src/net/cluster/): wait past
  # that, or it lands in a measured phase.
  if [ "$clustered" = 1 ]; then sleep 7; else sleep 1; fi
  local redis_args=()
  [ -n "$redis_pid" ] && redis_args=(--redis-port "$redis_port" --redis-pid "$redis_pid")
  timeout -k 5 "$client_timeout" node "$here/fleet.mjs" --urls "$urls" --pids "$pids" \
    --metrics "$metrics" "${redis_args[@]}" --rooms "$rooms" --room-size "$room_size" \
    --join-rate "$join_rate" --rate "$rate" --duration "$duration" --burst "$burst" \
    --label "$topo" >"$out/$topo-$rep.json" 2>>"$out/client.err" &
  client_pid=$!
  local rc=0
  wait "$client_pid" || rc=$?
  client_pid=""
  stop_all
  local line
  line=$(cat "$out/$topo-$rep.json")
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    echo "$topo rep $rep: the client failed (exit $rc) or timed out (see $out/client.err)" >&2
    return 1
  fi
  node -e '
    const r = JSON.parse(process.argv[1]);
    Object.assign(r, { topology: process.argv[2], rep: Number(process.argv[3]) });
    console.log(JSON.stringify(r));
  ' "$line" "$topo" "$rep" >>"$results"
  node -e '
    const r = JSON.parse(process.argv[1]);
    const flag = r.ok ? "" : "  ** NOT OK: " + JSON.stringify(r.first_errors || r.counts);
    const f = (x) => (x === null || x === undefined ? "–" : x);
    console.log(`${process.argv[2]} rep ${process.argv[3]}: join p50/p99 ${f(r.join.p50_ms)}/${f(r.join.p99_ms)} ms, ` +
      `chat ${f(r.chat.p50_ms)}/${f(r.chat.p99_ms)} ms, signal ${f(r.signal.p50_ms)}/${f(r.signal.p99_ms)} ms, ` +
      `burst ${f(r.burst?.delivered_per_second)}/s; lost ${r.chat.lost}+${r.signal.lost}+${r.burst?.lost ?? 0}${flag}`);
  ' "$line" "$topo" "$rep"
}

{
  echo "nproc: $(nproc)"
  lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1
  echo "kernel: $(uname -srm)"
  echo "redis: $(redis-server --version 2>/dev/null || echo none)"
  echo "node: $(node --version)"
  echo "$rendez_what"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings: rooms=$rooms room-size=$room_size reps=$reps join-rate=$join_rate rate=$rate duration=${duration}s burst=$burst"
} >"$out/machine.txt"
echo "$participants participants in $rooms rooms of $room_size; reps: $reps; topologies: $only; $rendez_what"
failed_runs=0
for rep in $(seq 1 "$reps"); do
  for topo in $only; do
    run_one "$topo" "$rep" || failed_runs=$((failed_runs + 1))
  done
done
[ -s "$results" ] || { echo "no run completed" >&2; exit 1; }

# --- Redis's own ceiling for one connection: one command at a time, and pipelined ------------------
if [ -n "${ran_redis:-}" ] && command -v redis-benchmark >/dev/null; then
  mkdir -p "$out/redis-ceiling"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --protected-mode no --dir "$out/redis-ceiling" >"$out/redis-ceiling.log" 2>&1 &
  running+=("$!")
  if wait_listening "$!" "$redis_port" "$out/redis-ceiling.log"; then
    : >"$out/redis-ceiling.csv"
    for depth in 1 16; do
      timeout 60 redis-benchmark -h 127.0.0.1 -p "$redis_port" -c 1 -P "$depth" -n 100000 --csv \
        PUBLISH rendez:to:bench 0123456789012345678901234567890123456789 \
        | sed -n "2s/^\"[^\"]*\"/\"$depth in flight\"/p" >>"$out/redis-ceiling.csv" || true
    done
  fi
  stop_all
fi

# --- the table -----------------------------------------------------------------------------------
node "$here/table.mjs" "$results" "$out/machine.txt" >"$out/table.md"
echo
cat "$out/table.md"
if [ "$failed_runs" -gt 0 ]; then
  echo "$failed_runs run(s) did not complete; the table leaves them out" >&2
  exit 1
fi
