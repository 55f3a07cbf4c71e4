#!/usr/bin/env bash
# tests/launch/timeout.sh — parallel.timeout_s: a rank that hangs does not keep its peers
# waiting forever (ctest case, label mpi).
#
#   timeout.sh MPIEXEC PTRAIN WORKDIR DEVICE [mpirun flags...]
#
# A 2-rank pipeline run (pp 2, DEVICE) with parallel.timeout_s: 3 where world rank 1 hangs
# before step 3 (the PTRAIN_TEST_STALL hook): rank 0 waits in a pipeline receive, its watchdog
# ends it after 3 s naming the rank, the group and the call, and mpirun ends the job: the whole
# job is over within 20 s, non-zero, and no ptrain process of it is left.
set -uo pipefail
mpiexec=$1 ptrain=$2 work=$3 device=$4
shift 4
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/mpi_case.sh"
make_corpus "$ptrain" "$work" 5 2000 || exit 1
cat >"$work/cfg.yaml" <<YAML
model: {arch: llama, vocab_size: 256, hidden: 32, layers: 2, heads: 4, ffn_hidden: 64, max_seq_len: 32}
parallel: {pp: 2, timeout_s: 3}
train: {seq_len: 32, micro_batch: 2, global_batch: 4, steps: 1000, precision: fp32, threads: 1, log_every: 1}
optim: {warmup_steps: 1}
data: {path: $work/c.h5, shuffle: false}
checkpoint: {dir: $work/run, every: 0}
device: $device
YAML
t0=$(date +%s.%N)
PTRAIN_TEST_STALL=1:3 timeout 60 "$mpiexec" "$@" -x PTRAIN_TEST_STALL -np 2 "$ptrain" --cfg "$work/cfg.yaml" \
  >"$work/out.txt" 2>&1
rc=$?
t1=$(date +%s.%N)
secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
echo "job ended after $secs s, exit status $rc"
fail=0
[[ $rc -ne 0 && $rc -ne 124 ]] || { echo "FAIL: exit status $rc (0: did not stop; 124: killed by timeout 60)"; fail=1; }
python3 -c "import sys; sys.exit(0 if $t1 - $t0 < 20 else 1)" || { echo "FAIL: took $secs s"; fail=1; }
grep -q "error on rank 0: receive from rank 1 .* on group 'pp' (2 ranks; this rank is its rank 0) did not complete within 3 s (parallel.timeout_s)" "$work/out.txt" ||
  { echo "FAIL: no watchdog message naming rank 0, the pp group and the receive"; cat "$work/out.txt"; fail=1; }
sleep 0.5
left=$(pgrep -f "ptrain --cfg $work/cfg.yaml" | wc -l)
[[ $left -eq 0 ]] || { echo "FAIL: $left ptrain processes left"; pkill -9 -f "ptrain --cfg $work/cfg.yaml"; fail=1; }
grep -m1 "did not complete" "$work/out.txt"
exit $fail
