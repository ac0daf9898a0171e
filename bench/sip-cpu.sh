#!/usr/bin/env bash
# Where a REGISTER's CPU goes: runs sipp's digest REGISTER scenario against a fresh
# `ledgerline up` (1000 extensions, private Postgres) at each given rate, and prints per step
# the successful rate, how many cores the node and its Postgres cluster used, the machine's
# busy share, and CPU microseconds per successful registration for each. Not a comparison
# (bench/sip.sh is); a tool to see which side a change moved. Bounded: each step runs
# `seconds` of load with a timeout.
#
# Usage: bench/sip-cpu.sh [seconds-per-step] [rate ...]    (default: 6 s; 2000 4000 6000 8000)
# Needs: sipp, bc. KEEP=1 keeps the data directory; the node stays up only while this runs.
# LEDGERLINE_BIN=path runs that binary (no build).
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
anchors=${LEDGERLINE_ANCHORS:-$root/../shared/anchors}
STEP=${1:-6}
shift || true
RATES=${*:-2000 4000 6000 8000}
for tool in sipp bc; do
  command -v "$tool" >/dev/null || { echo "bench/sip-cpu.sh: $tool is missing (apt-get install sip-tester bc)" >&2; exit 2; }
done
# LEDGERLINE_BIN runs a given binary instead of building this checkout (to compare two
# builds step by step in one sitting: the machine's speed drifts between sittings).
if [ -n "${LEDGERLINE_BIN:-}" ]; then
  bin=$LEDGERLINE_BIN
else
  cargo build --release -q -p gateway || exit 2
  bin=$root/target/release/ledgerline
fi
tmp=$(mktemp -d); chmod 755 "$tmp"  # the embedded cluster runs as `postgres` when we are root
upid=
cleanup() {
  [ -n "$upid" ] && kill "$upid" 2>/dev/null; wait 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "# kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
data=$tmp/data
export LEDGERLINE_LOG=${LEDGERLINE_LOG:-warn}
tenant=$("$bin" --data-dir "$data" tenant create --name Bench --domain acme.test --max-extensions 100000 --max-calls 100000) || exit 2
{ echo "number,name,password"; for u in $(seq 1000 1999); do echo "$u,User $u,pass-$u"; done; } >"$tmp/ext.csv"
"$bin" --data-dir "$data" extension import --tenant "$tenant" --csv "$tmp/ext.csv" >/dev/null || exit 2
"$bin" --data-dir "$data" extension list --tenant "$tenant" >/dev/null || exit 2
{ echo SEQUENTIAL; for u in $(seq 1000 1999); do echo "$u;acme.test;[authentication username=$u password=pass-$u];5080"; done; } >"$tmp/reg.csv"
"$bin" --data-dir "$data" up --sip-bind 127.0.0.1:5074 --http-bind 127.0.0.1:0 --sip-secret bench >"$tmp/up.log" 2>&1 &
upid=$!
for _ in $(seq 1 300); do grep -q "stop with Ctrl-C" "$tmp/up.log" && break; sleep 0.1; done
grep -q "stop with Ctrl-C" "$tmp/up.log" || { echo "bench/sip-cpu.sh: the node did not start" >&2; cat "$tmp/up.log" >&2; exit 2; }
# The embedded cluster's postmaster (DATABASE_URL unset); its backends are its children.
postmaster=$(head -1 "$data/postgres/postmaster.pid" 2>/dev/null)
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) | commit $(git rev-parse --short HEAD 2>/dev/null) | postmaster ${postmaster:-none}"

ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
  [ -n "$postmaster" ] || { echo 0; return; }
  { ticks "$postmaster"; for p in $(pgrep -P "$postmaster"); do ticks "$p"; done; } | awk '{s+=$1} END {print s+0}'
}
idle_total() { awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
hz=$(getconf CLK_TCK)

for r in $RATES; do
  stat=$tmp/stat-$r.csv
  c0=$(ticks "$upid"); p0=$(pg_ticks); read -r i0 a0 < <(idle_total); t0=$(date +%s.%N)
  timeout $((STEP * 4 + 30)) sipp 127.0.0.1:5074 -sf "$anchors/sipp/reg_auth.xml" -inf "$tmp/reg.csv" -i 127.0.0.1 -p 0 \
    -r "$r" -m $((r * STEP)) -l 20000 -buff_size 4194304 -recv_timeout 8000 -timeout $((STEP * 3 + 20)) \
    -nostdin -trace_stat -stf "$stat" >/dev/null 2>&1
  t1=$(date +%s.%N); c1=$(ticks "$upid"); p1=$(pg_ticks); read -r i1 a1 < <(idle_total)
  ok=$(tail -1 "$stat" 2>/dev/null | awk -F';' '{print $16}'); fail=$(tail -1 "$stat" 2>/dev/null | awk -F';' '{print $18}')
  ok=${ok:-0}; fail=${fail:-unknown}
  wall=$(echo "$t1 - $t0" | bc -l)
  per() { if [ "$ok" -gt 0 ]; then echo "($1) * 1000000 / $hz / $ok" | bc; else echo -; fi; }
  printf 'STEP target=%s ok=%s failed=%s rate=%s node_cores=%.2f pg_cores=%.2f busy=%.2f node_us_per_reg=%s pg_us_per_reg=%s\n' \
    "$r" "$ok" "$fail" "$(echo "$ok / $wall" | bc)" \
    "$(echo "($c1 - $c0) / $hz / $wall" | bc -l)" "$(echo "($p1 - $p0) / $hz / $wall" | bc -l)" \
    "$(echo "1 - ($i1 - $i0) / ($a1 - $a0)" | bc -l)" "$(per "$c1 - $c0")" "$(per "$p1 - $p0")"
done
