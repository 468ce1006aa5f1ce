# Shell helpers shared by the benchmark scripts (benches/compare.sh, benches/xdp/compare.sh,
# benches/signal/compare.sh, benches/fleet/compare.sh): `source` it.

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# raise_fd_limit NEED HINT: the soft limit on open files up to the hard one; stops (with HINT)
# when the hard limit is below NEED.
raise_fd_limit() {
  local need=$1 hint=$2 hard
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    echo "the hard limit on open files ($hard) is below $need; raise it or $hint" >&2
    exit 1
  fi
  ulimit -n "$hard" 2>/dev/null || ulimit -n "$need"
}

# make_out_dir PREFIX: sets `out` (a fresh /tmp/PREFIX.XXXXXX unless --out gave one) and an
# empty `results` (results.jsonl in it).
make_out_dir() {
  if [ -z "$out" ]; then
    out=$(mktemp -d "/tmp/$1.XXXXXX")
  else
    mkdir -p "$out"
  fi
  results="$out/results.jsonl"
  : >"$results"
  echo "results in $out"
}

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# RENDEZ_* variables override a config file; none of the caller's may leak into a bench:
# `env "${clean_env[@]}" rendez …`.
clean_env=()
while IFS= read -r name; do clean_env+=(-u "$name"); done < <(env | sed -n 's/^\(RENDEZ_[A-Z0-9_]*\)=.*/\1/p')

# wait_listening PID PORT LOG: until PORT on 127.0.0.1 accepts TCP, at most 15 s; shows the
# tail of LOG when the process exits first or nothing listens.
wait_listening() {
  local pid=$1 port=$2 log=$3
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { echo "process exited early; its log:" >&2; tail -20 "$log" >&2; return 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listened on $port within 15 s; its log:" >&2
  tail -20 "$log" >&2
  return 1
}

# The server gets the last CPU, the generator's side the others, so that each side's CPU
# time is its own (PIN=0: no pinning, or on one CPU). Sets SERVER_CPUS and GENERATOR_CPUS
# (empty: unpinned).
setup_pinning() {
  local cpus
  cpus=$(nproc)
  SERVER_CPUS="" GENERATOR_CPUS=""
  if ((PIN)) && ((cpus >= 2)) && command -v taskset >/dev/null; then
    SERVER_CPUS=$((cpus - 1))
    GENERATOR_CPUS=0-$((cpus - 2))
  fi
}

# The machine and the software compared, then whatever lines the caller adds (on stdin),
# into $OUT/machine.txt.
describe_machine() {
  {
    echo "nproc: $(nproc)"
    lscpu | head -n 15
    echo "kernel: $(uname -srm)"
    echo "coturn: $(turnserver --version 2>/dev/null | head -n 1)"
    echo "rendez: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    cat
  } >"$OUT/machine.txt"
}

# rendez's `[limits]` for a benchmark: one generator, one address, one user, hundreds of
# thousands of 401s and hundreds of megabytes per second per allocation. Raised past what
# the generator reaches, as coturn's defaults have no such limits; still on, so their cost
# is in every figure.
limits_section() {
  cat <<'LIMITS'
[limits]
allocations-per-user = 1000000
allocations-per-ip = 1000000
allocations-total = 1000000
bandwidth-per-allocation = 1000000000
unauthorized-per-ip = 1000000
binding-per-ip = 1000000
LIMITS
}
