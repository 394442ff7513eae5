#!/usr/bin/env bash
# Two hosts on one machine for the `multinode` tests: two network namespaces ("host A" and
# "host B") joined by a veth pair, with addresses of the test's own (10.213.97.1/30 on A,
# 10.213.97.2/30 on B; nothing routes out of the namespaces, so nothing leaves them), one rank
# (or one torchrun node agent) started in each with `ip netns exec`. Namespaces and links are
# named after this script's PID, so concurrent runs do not collide; they are removed, with every
# process still inside them, on every outcome (EXIT, INT, TERM).
#
#   two_hosts.sh SCENARIO [--worker DIST_WORKER] [--torchrun TORCHRUN] [--train-gpt TRAIN_GPT]
#                         [--work-dir DIR]
#
# Scenarios:
#   parity        rank 0 on A (hosts the store), rank 1 on B with MASTER_ADDR=A's address; Gloo
#                 bound to each host's veth (GLOO_SOCKET_IFNAME): `dist_worker parity`, every
#                 policy bitwise against one process
#   torchrun      the same under `torchrun --nnodes=2`, one node agent per host, one worker each:
#                 a c10d rendezvous hosted on A (torchrun 2.x), or a static one with node 0 on A
#                 (torchrun 1.x, which lacks --local-addr); skips without a working torchrun
#   link_down     both ranks train; once both have done 3 steps, A's veth goes down: each rank must
#                 fail with an error within its 3 s timeout (dist_worker link_down checks)
#   never_arrives rank 0 alone on A (its peer never comes) and rank 1 alone on B (nobody hosts the
#                 store): each fails with an error naming what it waited for, within 3 s
#   resume        train_gpt on both hosts saving every 2 steps; the link goes down mid-run, both
#                 ranks fail; the link comes back and the restarted ranks resume from the last
#                 checkpoint and finish
#
# Exit status: 0 passed, 1 failed, 77 skipped (prints "SKIP: why"; ctest's SKIP_RETURN_CODE).
set -uo pipefail

scenario=${1:-}
shift || true
worker="" torchrun="" train_gpt="" work_dir=""
while (($#)); do
  case $1 in
    --worker) worker=$2; shift 2 ;;
    --torchrun) torchrun=$2; shift 2 ;;
    --train-gpt) train_gpt=$2; shift 2 ;;
    --work-dir) work_dir=$2; shift 2 ;;
    *) echo "two_hosts.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "two_hosts: FAILED: $*"; exit 1; }
say() { printf '[two_hosts %5ss] %s\n' "$(elapsed)" "$*"; }
start_ns=$(date +%s%N)
elapsed() { local ms=$((($(date +%s%N) - start_ns) / 1000000)); echo "$((ms / 1000)).$((ms % 1000 / 100))"; }

# --- can this machine make hosts? ---------------------------------------------------------------
((EUID == 0)) || skip "network namespaces need root (this runs as $(id -un)); CI runs the multinode tests as root"
command -v ip >/dev/null || skip "no 'ip' command (Debian: apt-get install iproute2)"

ns_a=actckpt-$$-a ns_b=actckpt-$$-b
if_a=ack$$a if_b=ack$$b  # at most 15 characters (IFNAMSIZ)
addr_a=10.213.97.1 addr_b=10.213.97.2

cleanup() {
  local ns pids
  for ns in "$ns_a" "$ns_b"; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    # shellcheck disable=SC2086  # one PID per word
    [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
  done
  for ns in "$ns_a" "$ns_b"; do ip netns del "$ns" 2>/dev/null; done  # takes the veth ends in it along
  ip link del "$if_a" 2>/dev/null  # only if it never got into its namespace
  rm -rf "${tmp:-}"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Hosts of runs that were killed outright (SIGKILL: no trap runs), e.g. by ctest's TIMEOUT:
# their namespaces carry a PID that no longer runs.
for stale in $(ip netns list 2>/dev/null | grep -Eo '^actckpt-[0-9]+-[ab]\b'); do
  owner=${stale#actckpt-} owner=${owner%-*}
  if ! kill -0 "$owner" 2>/dev/null; then
    stale_pids=$(ip netns pids "$stale" 2>/dev/null)
    # shellcheck disable=SC2086
    [[ -n $stale_pids ]] && kill -KILL $stale_pids 2>/dev/null
    ip netns del "$stale" 2>/dev/null && echo "two_hosts: removed $stale, left by a run that was killed"
  fi
done

if ! ip netns add "$ns_a" 2>/dev/null; then
  skip "cannot create a network namespace here (ip netns add failed: a container without CAP_SYS_ADMIN?)"
fi
ip netns add "$ns_b" || fail "ip netns add $ns_b"
ip link add "$if_a" type veth peer name "$if_b" || skip "cannot create a veth pair (ip link add ... type veth failed)"
ip link set "$if_a" netns "$ns_a" && ip link set "$if_b" netns "$ns_b" || fail "moving the veth ends into the namespaces"
ip -n "$ns_a" addr add "$addr_a/30" dev "$if_a" && ip -n "$ns_b" addr add "$addr_b/30" dev "$if_b" || fail "addresses"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up || fail "lo up in $ns"; done
ip -n "$ns_a" link set "$if_a" up && ip -n "$ns_b" link set "$if_b" up || fail "veth up"
# Carrier comes a moment after "up"; no ping on a minimal Debian, so the route and the state.
link_is_up() { ip -n "$ns_a" link show "$if_a" | grep -q 'state UP' && ip -n "$ns_b" link show "$if_b" | grep -q 'state UP'; }
for _ in $(seq 50); do link_is_up && break; sleep 0.1; done
link_is_up || fail "the veth pair did not come up"
ip -n "$ns_b" route get "$addr_a" | grep -q "dev $if_b" || fail "host B has no route to host A ($addr_a) over $if_b"
say "hosts: A = $ns_a ($if_a $addr_a), B = $ns_b ($if_b $addr_b)"

tmp=$(mktemp -d /tmp/actckpt-two-hosts.XXXXXX)
[[ -n $work_dir ]] || work_dir=$tmp
mkdir -p "$work_dir"

# on_host A|B LOG COMMAND...: runs COMMAND in that host's namespace in the background, output to
# LOG, bounded by a 90 s `timeout` (each scenario's own limits are much shorter); sets $last_pid.
on_host() {
  local host=$1 log=$2
  shift 2
  local ns=$ns_a ifname=$if_a
  [[ $host == B ]] && ns=$ns_b ifname=$if_b
  ip netns exec "$ns" env GLOO_SOCKET_IFNAME="$ifname" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    timeout -k 5 90 "$@" >"$log" 2>&1 &
  last_pid=$!
}

# A rank started by hand (no launcher): rank 0 hosts the store at MASTER_ADDR, its own address.
rank_on_host() {
  local host=$1 rank=$2 log=$3 port=$4
  shift 4
  on_host "$host" "$log" env RANK="$rank" WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR="$addr_a" MASTER_PORT="$port" "$@"
}

# two_ranks LOG_SUFFIX PORT_A PORT_B COMMAND...: rank 0 on A (logs to $tmp/a<SUFFIX>.log, store at
# PORT_A) and rank 1 on B ($tmp/b<SUFFIX>.log, looking for the store at A's PORT_B); sets
# $pid_a and $pid_b.
two_ranks() {
  local suffix=$1 port_a=$2 port_b=$3
  shift 3
  rank_on_host A 0 "$tmp/a$suffix.log" "$port_a" "$@"
  pid_a=$last_pid
  rank_on_host B 1 "$tmp/b$suffix.log" "$port_b" "$@"
  pid_b=$last_pid
}

# wait_rank PID LOG NAME EXPECTED_STATUS: waits, prints the rank's output, checks its exit status.
status_ok=1
wait_rank() {
  local pid=$1 log=$2 name=$3 expected=$4 status
  wait "$pid"
  status=$?
  sed "s/^/  $name | /" "$log"
  if [[ $status != "$expected" ]]; then
    say "$name exited with $status, expected $expected"
    status_ok=0
  else
    say "$name exited with $status as expected"
  fi
}

# wait_for_line LOG REGEX SECONDS PID...: true once LOG has a line matching REGEX; false after
# SECONDS, or as soon as one of the PIDs has ended.
wait_for_line() {
  local log=$1 regex=$2 limit=$3 waited=0 pid
  shift 3
  while ! grep -Eq "$regex" "$log" 2>/dev/null; do
    ((waited >= limit * 10)) && return 1
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
    sleep 0.1
    ((waited++))
  done
}

nothing_left_behind() {
  local ns pids
  for ns in "$ns_a" "$ns_b"; do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    if [[ -n $pids ]]; then
      say "processes left behind in $ns: $(ps -o pid=,args= -p "${pids//$'\n'/,}" 2>/dev/null | tr '\n' ';')"
      status_ok=0
    fi
  done
}

# joined_over_veth MASTER_ADDR_REGEX: each host's worker must have joined with Gloo bound to its
# own end of the veth pair, and MASTER_ADDR a veth address.
joined_over_veth() {
  grep -Eq "joined 2 ranks over gloo, MASTER_ADDR=$1, interface $if_a\$" "$tmp/a.log" &&
    grep -Eq "joined 2 ranks over gloo, MASTER_ADDR=$1, interface $if_b\$" "$tmp/b.log" ||
    { say "the workers did not report joining over $if_a and $if_b with MASTER_ADDR=$1"; status_ok=0; }
}

port=29517  # inside the namespaces every port is free
case $scenario in
  parity)
    [[ -x $worker ]] || fail "--worker: no dist_worker at '$worker'"
    two_ranks "" $port $port "$worker" parity
    wait_rank "$pid_a" "$tmp/a.log" "host A rank 0" 0
    wait_rank "$pid_b" "$tmp/b.log" "host B rank 1" 0
    joined_over_veth "${addr_a//./\\.}"
    ;;
  torchrun)
    [[ -x $worker ]] || fail "--worker: no dist_worker at '$worker'"
    [[ -n $torchrun && -x $torchrun ]] ||
      skip "no torchrun here (PyTorch's launcher: pip's torch wheel, or Debian's python3-torch), so the multi-node launch under torchrun is not tested"
    "$torchrun" --help >"$tmp/help" 2>&1 || { sed 's/^/  torchrun --help | /' "$tmp/help" | tail -5; skip "torchrun at $torchrun does not run (see above)"; }
    if grep -q -- '--local[-_]addr' "$tmp/help"; then
      # c10d rendezvous hosted by host A's agent. Neither host's name resolves to its veth
      # address, so say which agent hosts (is_host) and which address each node advertises.
      rdzv() { echo --rdzv-backend=c10d --rdzv-endpoint=$addr_a:$port --rdzv-id=actckpt-$$ --rdzv-conf=is_host=$1 --local-addr=$2; }
      launch_a=$(rdzv 1 $addr_a) launch_b=$(rdzv 0 $addr_b)
    else
      # torchrun 1.x: static rendezvous, node 0's agent hosts the store at --master-addr.
      launch_a="--node_rank=0 --master_addr=$addr_a --master_port=$port"
      launch_b="--node_rank=1 --master_addr=$addr_a --master_port=$port"
    fi
    # -r 1 -t 1: torchrun 1.13 crashes in its log set-up under Python 3.11 without them.
    common=(--nnodes=2 --nproc_per_node=1 --max_restarts=0 --monitor_interval=0.1 --no_python -r 1 -t 1)
    # shellcheck disable=SC2086  # the launch options are words
    on_host A "$tmp/a.log" "$torchrun" "${common[@]}" $launch_a "$worker" parity
    pid_a=$last_pid
    # shellcheck disable=SC2086
    on_host B "$tmp/b.log" "$torchrun" "${common[@]}" $launch_b "$worker" parity
    pid_b=$last_pid
    wait_rank "$pid_a" "$tmp/a.log" "host A torchrun" 0
    wait_rank "$pid_b" "$tmp/b.log" "host B torchrun" 0
    # c10d's rendezvous may make either node's worker rank 0: MASTER_ADDR is then that node's.
    joined_over_veth "(${addr_a//./\\.}|${addr_b//./\\.})"
    ;;
  link_down)
    [[ -x $worker ]] || fail "--worker: no dist_worker at '$worker'"
    two_ranks "" $port $port "$worker" link_down
    if wait_for_line "$tmp/a.log" "step 3 done" 60 "$pid_a" "$pid_b" &&
       wait_for_line "$tmp/b.log" "step 3 done" 10 "$pid_a" "$pid_b"; then
      say "both ranks are training: taking $if_a down"
      ip -n "$ns_a" link set "$if_a" down || fail "ip link set $if_a down"
    else
      say "the ranks did not reach step 3 (within 60 s, or one ended first)"
      status_ok=0
    fi
    down_at=$(elapsed)
    wait_rank "$pid_a" "$tmp/a.log" "host A rank 0" 0
    wait_rank "$pid_b" "$tmp/b.log" "host B rank 1" 0
    say "both ranks ended $(echo "$(elapsed) $down_at" | awk '{printf "%.1f", $1 - $2}') s after the link went down (timeout 3 s)"
    ;;
  never_arrives)
    [[ -x $worker ]] || fail "--worker: no dist_worker at '$worker'"
    # Rank 0 hosts a store on A and waits for a peer that never comes; rank 1 on B looks for a
    # store on A's other port, which nobody hosts.
    two_ranks "" $port $((port + 1)) "$worker" never_arrives
    wait_rank "$pid_a" "$tmp/a.log" "host A rank 0" 0
    wait_rank "$pid_b" "$tmp/b.log" "host B rank 1" 0
    ;;
  resume)
    [[ -x $train_gpt ]] || fail "--train-gpt: no train_gpt at '$train_gpt'"
    ckpt=$work_dir/two_hosts_resume.pt
    rm -f "$ckpt" "$ckpt.partial"
    tiny=(--seq_len 32 --batch_size 8 --num_layers 2 --hidden_dim 32 --head_dim 8 --ff_dim 64 --log-every 10
          --sample-length 0 --eval-batches 0 --dist-timeout 3 --save "$ckpt" --save-every 2)
    # First run: far more steps than it gets to; the link goes down once a checkpoint exists.
    two_ranks "" $port $port "$train_gpt" "${tiny[@]}" --steps 100000
    if wait_for_line "$tmp/a.log" "saved .* \(step 4\)" 60 "$pid_a" "$pid_b"; then
      say "rank 0 has saved step 4: taking $if_a down"
      ip -n "$ns_a" link set "$if_a" down || fail "ip link set $if_a down"
    else
      say "rank 0 did not save step 4 (within 60 s, or a rank ended first)"
      status_ok=0
    fi
    wait_rank "$pid_a" "$tmp/a.log" "host A rank 0 (link fails)" 1
    wait_rank "$pid_b" "$tmp/b.log" "host B rank 1 (link fails)" 1
    # The error says what failed and where to restart from.
    for log in "$tmp/a.log" "$tmp/b.log"; do
      grep -Eq "^train_gpt: error: step [0-9]+: data parallel communication failed: .*restart every rank with --load $ckpt" "$log" ||
        { say "no 'data parallel communication failed ... restart every rank with --load' error in $(basename "$log")"; status_ok=0; }
    done
    last=$(grep -o 'saved .* (step [0-9]*)' "$tmp/a.log" | tail -1 | grep -o '[0-9]*)$' | tr -d ')')
    [[ -n $last && -f $ckpt && ! -e $ckpt.partial ]] || { say "no whole checkpoint after the failure"; status_ok=0; }
    grep -q -- "--load $ckpt (step $last)" "$tmp/a.log" || { say "rank 0's error does not name step $last"; status_ok=0; }
    nothing_left_behind
    # The link is back: both ranks restart from the last checkpoint and finish 4 steps later.
    ip -n "$ns_a" link set "$if_a" up || fail "ip link set $if_a up"
    for _ in $(seq 50); do link_is_up && break; sleep 0.1; done
    target=$((last + 4))
    two_ranks 2 $((port + 1)) $((port + 1)) "$train_gpt" "${tiny[@]}" --steps $target --load "$ckpt"
    wait_rank "$pid_a" "$tmp/a2.log" "host A rank 0 (restarted)" 0
    wait_rank "$pid_b" "$tmp/b2.log" "host B rank 1 (restarted)" 0
    grep -q "resuming from $ckpt at step $last\b" "$tmp/a2.log" || { say "the restart did not resume at step $last"; status_ok=0; }
    grep -q "saved $ckpt (step $target)" "$tmp/a2.log" || { say "the restart did not reach step $target"; status_ok=0; }
    ;;
  *)
    fail "unknown scenario '$scenario' (parity, torchrun, link_down, never_arrives, resume)"
    ;;
esac
nothing_left_behind
((status_ok)) || fail "$scenario"
say "$scenario OK"
