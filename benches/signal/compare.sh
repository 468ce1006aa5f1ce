#!/usr/bin/env bash
# Signaling memory per participant: rendez vs a minimal Node.js `ws` room server (anchor.mjs),
# same client (clients.mjs), same machine, alternating runs, medians.
#
#   benches/signal/compare.sh                    # 5000 participants, 3 reps each (~2-3 min)
#   benches/signal/compare.sh --quick            # 1000 participants, 1 rep
#   benches/signal/compare.sh --participants 2000 --reps 5
#
# Everything runs on 127.0.0.1; every server and client this script starts is stopped on exit.
# Results go to a fresh /tmp/rendez-signal-bench.* directory (or --out DIR): results.jsonl
# (one line per run), table.md, the rendez config and the servers' logs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# is_uint, raise_fd_limit, make_out_dir, stop_pid, clean_env, wait_listening
source "$here/../lib.sh"

participants=5000
reps=3
room_size=6
settle_joined=2
settle_closed=3
signal_port=18080
anchor_port=18081
turn_port=13478
out=""
build=1
rendez_bin=""
only="rendez node-ws"

usage() {
  cat <<EOF
usage: $0 [options]
  --participants N   WebSocket participants per run (default $participants, at most 20000)
  --reps N           alternating repetitions per server (default $reps)
  --quick            --participants 1000 --reps 1
  --room-size N      participants per room (default $room_size)
  --settle-joined S  seconds between the last welcome and the "joined" reading (default $settle_joined)
  --settle-closed S  seconds between the last close and the "after" reading (default $settle_closed)
  --signal-port P    rendez's [signal] listen port on 127.0.0.1 (default $signal_port)
  --turn-port P      rendez's STUN/TURN listen port on 127.0.0.1 (default $turn_port)
  --anchor-port P    the Node anchor's port on 127.0.0.1 (default $anchor_port)
  --only LIST        "rendez", "node-ws" or "rendez node-ws" (default)
  --rendez PATH      use this rendez binary instead of building target/release/rendez
  --no-build         do not run cargo build (use the existing target/release/rendez)
  --out DIR          write results here (default: a fresh /tmp/rendez-signal-bench.XXXXXX)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --participants) participants=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) participants=1000; reps=1; shift ;;
    --room-size) room_size=$2; shift 2 ;;
    --settle-joined) settle_joined=$2; shift 2 ;;
    --settle-closed) settle_closed=$2; shift 2 ;;
    --signal-port) signal_port=$2; shift 2 ;;
    --turn-port) turn_port=$2; shift 2 ;;
    --anchor-port) anchor_port=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --rendez) rendez_bin=$2; build=0; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for v in participants reps room_size signal_port turn_port anchor_port; do
  is_uint "${!v}" || { echo "--${v//_/-} must be a whole number" >&2; exit 2; }
done
[ "$participants" -ge 1 ] && [ "$participants" -le 20000 ] \
  || { echo "--participants must be 1..20000" >&2; exit 2; }
[ "$reps" -ge 1 ] && [ "$reps" -le 20 ] || { echo "--reps must be 1..20" >&2; exit 2; }
for v in settle_joined settle_closed; do
  [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "--${v//_/-} must be a number of seconds" >&2; exit 2; }
done
for s in $only; do
  case "$s" in rendez|node-ws) ;; *) echo "--only: unknown server $s" >&2; exit 2 ;; esac
done

command -v node >/dev/null || { echo "node is required (Node.js 18 or later)" >&2; exit 1; }
command -v timeout >/dev/null || { echo "timeout (coreutils) is required" >&2; exit 1; }

# Each side holds one socket per participant (the client in one process, the server in
# another), plus a few for the runtime.
raise_fd_limit $((participants + 512)) "lower --participants"

make_out_dir rendez-signal-bench

# --- everything started here is stopped on exit -----------------------------------------------
server_pid=""   # the one server running now, if any
client_pid=""   # the client (its `timeout` wrapper) running now, if any
cleanup() {
  if [ -n "$client_pid" ]; then stop_pid "$client_pid"; fi
  if [ -n "$server_pid" ]; then stop_pid "$server_pid"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() {
  ss -Hltn "sport = :$1" 2>/dev/null | grep -q . ||
    ss -Hlun "sport = :$1" 2>/dev/null | grep -q .
}

for p in "$signal_port" "$turn_port" "$anchor_port"; do
  if port_busy "$p"; then
    echo "port $p on this host is in use; pick others with --signal-port/--turn-port/--anchor-port" >&2
    exit 1
  fi
done

# --- build and install ---------------------------------------------------------------------------
if [ -z "$rendez_bin" ]; then
  if [ "$build" = 1 ]; then
    echo "building rendez (release)…"
    (cd "$repo" && flock /tmp/rendez-cargo.lock cargo build --release --bin rendez) \
      >"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
  fi
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  rendez_bin="$target_dir/release/rendez"
fi
[ -x "$rendez_bin" ] || { echo "no rendez binary at $rendez_bin" >&2; exit 1; }
if [ "$build" = 1 ]; then
  rendez_what="rendez $(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?')"
else
  rendez_what="rendez at $rendez_bin"
fi

if [ ! -f "$here/node_modules/ws/package.json" ]; then
  echo "installing the ws package (npm ci)…"
  (cd "$here" && npm ci --no-audit --no-fund) >"$out/npm.log" 2>&1 \
    || { tail -30 "$out/npm.log" >&2; exit 1; }
fi
ws_version=$(node -p "require('$here/node_modules/ws/package.json').version")

# --- rendez's configuration ---------------------------------------------------------------------
# Limits raised so every participant, all from 127.0.0.1, is admitted: [connections] caps the
# page server's connections too, and [signal] rooms-per-ip counts the members from one IP.
limit=$((participants + 100))
cat >"$out/rendez.toml" <<EOF
# Generated by benches/signal/compare.sh: loopback only, limits raised for one client IP.
realm = "bench"
listen = ["127.0.0.1:$turn_port"]
relay-ip = "127.0.0.1"
relay-ports = "50000-50999"
log-level = "warn"

[auth]
# A secret, so each welcome carries minted TURN credentials, as in a real deployment.
secrets = ["signal-bench-secret-not-for-production"]

[connections]
max = $limit
max-per-ip = $limit

[signal]
listen = "127.0.0.1:$signal_port"
room-size = $room_size
rooms-per-ip = $limit
EOF



# The client's own deadlines are 120 s to connect, 30 s to signal and 60 s to close; this is
# the outer bound for one run.
settle_whole=$(( $(printf '%.0f' "$settle_joined") + $(printf '%.0f' "$settle_closed") ))
client_timeout=$((240 + settle_whole))

run_one() { # SERVER REP
  local server=$1 rep=$2 pid url log port
  log="$out/$server-$rep.log"
  case "$server" in
    rendez)
      env "${clean_env[@]}" "$rendez_bin" serve --config "$out/rendez.toml" >"$log" 2>&1 &
      pid=$!
      url="ws://127.0.0.1:$signal_port/ws"
      port=$signal_port
      ;;
    node-ws)
      node "$here/anchor.mjs" --port "$anchor_port" --room-size "$room_size" \
        --secret signal-bench-secret-not-for-production --turn-port "$turn_port" >"$log" 2>&1 &
      pid=$!
      url="ws://127.0.0.1:$anchor_port/ws"
      port=$anchor_port
      ;;
  esac
  server_pid=$pid
  if ! wait_listening "$pid" "$port" "$log"; then
    stop_pid "$pid"; server_pid=""
    return 1
  fi
  # Let the server finish starting (runtime threads, lazy allocations) before "before".
  sleep 1
  # In the background and waited for, so a signal to this script stops it at once.
  timeout -k 5 "$client_timeout" node "$here/clients.mjs" --url "$url" --pid "$pid" \
    --participants "$participants" --room-size "$room_size" \
    --settle-joined "$settle_joined" --settle-closed "$settle_closed" --label "$server" \
    >"$out/$server-$rep.json" 2>>"$out/clients.err" &
  client_pid=$!
  local rc=0
  wait "$client_pid" || rc=$?
  client_pid=""
  local line
  line=$(cat "$out/$server-$rep.json")
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    echo "$server rep $rep: the client failed (exit $rc) or timed out (see $out/clients.err)" >&2
    stop_pid "$pid"; server_pid=""
    return 1
  fi
  stop_pid "$pid"; server_pid=""
  node -e '
    const r = JSON.parse(process.argv[1]);
    Object.assign(r, { server: process.argv[2], rep: Number(process.argv[3]) });
    console.log(JSON.stringify(r));
  ' "$line" "$server" "$rep" >>"$results"
  node -e '
    const r = JSON.parse(process.argv[1]);
    const flag = r.ok ? "" : "  ** NOT OK: " + JSON.stringify(r.first_errors || {}) ;
    console.log(`${process.argv[2].padEnd(8)} rep ${process.argv[3]}: ${r.joined}/${r.participants} joined, ` +
      `${r.per_participant_kib} KiB/participant, ${r.given_back_fraction} given back, ` +
      `RSS ${r.rss_before_kib} → ${r.rss_joined_kib} → ${r.rss_after_kib} KiB${flag}`);
  ' "$line" "$server" "$rep"
}

echo "participants: $participants in rooms of $room_size; reps: $reps; $rendez_what; ws $ws_version; node $(node --version)"
failed_runs=0
for rep in $(seq 1 "$reps"); do
  for server in $only; do
    run_one "$server" "$rep" || failed_runs=$((failed_runs + 1))
  done
done
[ -s "$results" ] || { echo "no run completed" >&2; exit 1; }

# --- the table -----------------------------------------------------------------------------------
node - "$results" "$participants" "$reps" "$ws_version" "$rendez_what" "$room_size" >"$out/table.md" <<'EOF'
const fs = require('fs');
const [file, participants, reps, wsVersion, rendezWhat, roomSize] = process.argv.slice(2);
const runs = fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map(JSON.parse);
const median = (xs) => {
  const s = xs.filter((x) => x !== null && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const servers = ['rendez', 'node-ws'].filter((s) => runs.some((r) => r.server === s));
const stats = {};
for (const s of servers) {
  const rs = runs.filter((r) => r.server === s);
  stats[s] = {
    runs: rs.length,
    failed: rs.filter((r) => !r.ok).length,
    kib: median(rs.map((r) => r.per_participant_kib)),
    back: median(rs.map((r) => r.given_back_fraction)),
    before: median(rs.map((r) => r.rss_before_kib)),
    joined: median(rs.map((r) => r.rss_joined_kib)),
    after: median(rs.map((r) => r.rss_after_kib)),
    connect: median(rs.map((r) => r.connect_seconds)),
    cpu: median(rs.map((r) => r.server_cpu_seconds_connect)),
  };
}
const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '–');
const lines = [];
lines.push(`Signaling memory, ${participants} participants in rooms of ${roomSize}, medians of ${reps} alternating runs (${rendezWhat}; node-ws: ws ${wsVersion}, node ${process.version})`);
lines.push('');
lines.push('| server | KiB per participant | fraction given back after close | RSS before → joined → after (MiB) | connect+join s | server CPU s (connect) | runs not ok |');
lines.push('| --- | ---: | ---: | --- | ---: | ---: | ---: |');
for (const s of servers) {
  const t = stats[s];
  lines.push(`| ${s} | ${f(t.kib)} | ${f(t.back, 2)} | ${f(t.before / 1024)} → ${f(t.joined / 1024)} → ${f(t.after / 1024)} | ${f(t.connect, 2)} | ${f(t.cpu, 2)} | ${t.failed}/${t.runs} |`);
}
if (stats.rendez && stats['node-ws']) {
  lines.push('');
  lines.push(`rendez / node-ws, KiB per participant: ${f(stats.rendez.kib / stats['node-ws'].kib, 2)}×`);
}
console.log(lines.join('\n'));
const bad = servers.reduce((n, s) => n + stats[s].failed, 0);
if (bad) console.log(`\n**${bad} run(s) had failures (missing welcomes, dropped sockets, bad peer lists or lost signals): see results.jsonl.**`);
EOF
echo
cat "$out/table.md"
if [ "$failed_runs" -gt 0 ]; then
  echo "$failed_runs run(s) did not complete; the table leaves them out" >&2
  exit 1
fi
