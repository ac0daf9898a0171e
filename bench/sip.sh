#!/usr/bin/env bash
# SIP benchmark: the same sipp load (digest REGISTER, then calls with INVITE digest held 2 s)
# against Ledgerline and against Kamailio 5.6 (../shared/anchors/kamailio/kamailio-auth.cfg),
# in one run on this machine. For each, a ladder of rates is climbed; the figure is the highest
# rate at which sipp saw zero failed transactions, as successful registrations (calls) per
# second of wall time. Ours does digest auth on every REGISTER and INVITE and appends every
# call event durably to Postgres (a private cluster unless DATABASE_URL is set).
# sipp's socket buffers are raised to 4 MiB: at its default (64 KiB) sipp's own socket
# overflowed at a few thousand registrations/s against either peer, and each dropped answer
# came back as a retransmission, so the bench measured sipp's losses rather than the peers.
#
# Usage: bench/sip.sh [seconds-per-step]      (needs: sipp, kamailio, bc; builds --release)
# Prints:
#   BENCH sip_register ours=<reg/s> kamailio=<reg/s> ratio=<x> unit=reg/s
#   BENCH sip_calls ours=<calls/s> kamailio=<calls/s> ratio=<x> unit=calls/s
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
anchors=${LEDGERLINE_ANCHORS:-$root/../shared/anchors}
STEP=${1:-4}
# The register ladder reaches past what Kamailio passes here (about 20,000/s on 2 cores): a
# ladder that both peers climb to the top says nothing about either (until 2026-12 it
# stopped at 12,000/s, which capped Kamailio's figure at about 11,850).
REG_LADDER=${REG_LADDER:-"500 1000 2000 3000 4000 5000 6000 8000 10000 12000 14000 16000 20000 24000 28000"}
CALL_LADDER=${CALL_LADDER:-"50 100 200 300 400 600 800 1000 1200"}
USERS=1000
for tool in sipp kamailio bc; do
  command -v "$tool" >/dev/null || { echo "bench/sip.sh: $tool is missing (apt-get install sip-tester kamailio bc)" >&2; exit 2; }
done
cargo build --release -q -p gateway || exit 2
bin=$root/target/release/ledgerline
tmp=$(mktemp -d); chmod 755 "$tmp"  # the embedded cluster runs as `postgres` when we are root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "# kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) | commit $(git rev-parse --short HEAD 2>/dev/null)"

# One UAS answering every call, on 5080 (the contact every user registers).
uaspid=$(sipp -sn uas -i 127.0.0.1 -p 5080 -bg 2>&1 | sed -n "s/.*PID=\[\([0-9]*\)\].*/\1/p")
[ -n "$uaspid" ] && pids+=("$uaspid")

# $1 target, $2 port, $3 password prefix: CSV files for registrations and calls.
csvs() {
  { echo SEQUENTIAL; for u in $(seq 1000 $((1000 + USERS - 1))); do echo "$u;acme.test;[authentication username=$u password=$3$u];5080"; done; } >"$tmp/$1-reg.csv"
  { echo RANDOM; for u in $(seq 1000 $((1000 + USERS - 1))); do echo "$u;acme.test;[authentication username=$u password=$3$u];$(( (u - 1000 + 1) % USERS + 1000 ))"; done; } >"$tmp/$1-call.csv"
}

# $1 target port, $2 scenario, $3 csv, $4 rate, $5 count, $6 seconds subtracted (call hold) -> "ok failed rate"
run_sipp() {
  local stat=$tmp/stat-$RANDOM.csv t0 t1 ok fail
  t0=$(date +%s.%N)
  timeout $((STEP * 4 + 30)) sipp "127.0.0.1:$1" -sf "$2" -inf "$3" -i 127.0.0.1 -p 0 -r "$4" -m "$5" -l 20000 -buff_size 4194304 \
    -recv_timeout 8000 -timeout $((STEP * 3 + 20)) -nostdin -trace_stat -stf "$stat" ${KEEP:+-trace_err} >/dev/null 2>&1
  t1=$(date +%s.%N)
  ok=$(tail -1 "$stat" 2>/dev/null | awk -F';' '{print $16}'); fail=$(tail -1 "$stat" 2>/dev/null | awk -F';' '{print $18}')
  ok=${ok:-0}; fail=${fail:-1}
  [ -n "${KEEP:-}" ] && cp "$stat" "$tmp/last-stat.csv"
  echo "$ok $fail $(echo "scale=0; $ok / ($t1 - $t0 - $6)" | bc)"
}

# $1 name, $2 port: climb the ladders; prints "best_reg best_calls".
climb() {
  local best_reg=0 best_call=0 r ok fail rate
  for r in $REG_LADDER; do
    read -r ok fail rate < <(run_sipp "$2" "$anchors/sipp/reg_auth.xml" "$tmp/$1-reg.csv" "$r" $((r * STEP)) 0)
    echo "# $1 register target=$r/s ok=$ok failed=$fail rate=$rate/s" >&2
    [ "$fail" = 0 ] && [ "$ok" -gt 0 ] || break
    [ "$rate" -gt "$best_reg" ] && best_reg=$rate
  done
  # A failed (overloaded) step leaves its transactions lingering for Timer J (64*T1 = 32 s,
  # RFC 3261 17.2.2), during which a node at its transaction bound refuses new requests:
  # let that pass (for both peers) so the call ladder starts from a node at rest.
  sleep 33
  # Every user registered once more (so all have a binding) before the calls.
  run_sipp "$2" "$anchors/sipp/reg_auth.xml" "$tmp/$1-reg.csv" 2000 "$USERS" 0 >/dev/null
  for r in $CALL_LADDER; do
    read -r ok fail rate < <(run_sipp "$2" "$anchors/sipp/call_auth.xml" "$tmp/$1-call.csv" "$r" $((r * STEP)) 2)
    echo "# $1 calls target=$r/s ok=$ok failed=$fail rate=$rate/s" >&2
    [ "$fail" = 0 ] && [ "$ok" -gt 0 ] || break
    [ "$rate" -gt "$best_call" ] && best_call=$rate
  done
  echo "$best_reg $best_call"
}

# --- Kamailio ---
k_reg=0; k_call=0
csvs kamailio 5070 pw-
if [ -z "${SKIP_KAMAILIO:-}" ]; then
kamailio -f "$anchors/kamailio/kamailio-auth.cfg" -m 256 -M 32 -DD -E >"$tmp/k.log" 2>&1 &
kpid=$!; pids+=("$kpid")
sleep 1.5
read -r k_reg k_call < <(climb kamailio 5070)
kill "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null
fi

# --- Ledgerline ---
csvs ours 5072 pass-
export LEDGERLINE_LOG=${LEDGERLINE_LOG:-warn}
data=$tmp/data
tenant=$("$bin" --data-dir "$data" tenant create --name Bench --domain acme.test --max-extensions 100000 --max-calls 100000) || exit 2
{ echo "number,name,password"; for u in $(seq 1000 $((1000 + USERS - 1))); do echo "$u,User $u,pass-$u"; done; } >"$tmp/ext.csv"
"$bin" --data-dir "$data" extension import --tenant "$tenant" --csv "$tmp/ext.csv" >/dev/null || exit 2
# Build the directory read model before the node starts (a CLI catch-up beside a running
# projector would compete with it for the same rows).
"$bin" --data-dir "$data" extension list --tenant "$tenant" >/dev/null || exit 2
"$bin" --data-dir "$data" up --sip-bind 127.0.0.1:5072 --sip-secret bench >"$tmp/up.log" 2>&1 &
upid=$!; pids+=("$upid")
for _ in $(seq 1 300); do grep -q "stop with Ctrl-C" "$tmp/up.log" && break; sleep 0.1; done
read -r o_reg o_call < <(climb ours 5072)

ratio() { if [ "$2" -gt 0 ]; then echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; else echo 0; fi; }
echo "BENCH sip_register ours=$o_reg kamailio=$k_reg ratio=$(ratio "$o_reg" "$k_reg") unit=reg/s"
echo "BENCH sip_calls ours=$o_call kamailio=$k_call ratio=$(ratio "$o_call" "$k_call") unit=calls/s"
