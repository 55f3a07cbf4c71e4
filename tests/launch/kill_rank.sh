#!/usr/bin/env bash
# tests/launch/kill_rank.sh — a killed rank ends the whole job (ctest case, label mpi).
#
#   kill_rank.sh MPIEXEC PTRAIN WORKDIR DEVICE RANKS [mpirun flags...]
#
# Starts a RANKS-rank pipeline run (pp RANKS, device DEVICE: cpu, or cuda = the emulated device
# in CI) long enough to be killed mid-step, waits for its first metrics row, kill -9's world
# rank 1, then requires: mpirun exits within 30 s, non-zero; its output names rank 1; no
# ptrain process of this job is left.
set -uo pipefail
mpiexec=$1 ptrain=$2 work=$3 device=$4 ranks=$5
shift 5
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/mpi_case.sh"
make_corpus "$ptrain" "$work" 3 3000 || exit 1
cat >"$work/kill.yaml" <<YAML
model: {arch: llama, vocab_size: 256, hidden: 64, layers: 4, heads: 4, ffn_hidden: 128, max_seq_len: 64}
parallel: {pp: $ranks}
train: {seq_len: 64, micro_batch: 2, global_batch: 8, steps: 100000, precision: fp32, threads: 1, log_every: 1}
data: {path: $work/c.h5, shuffle: false}
checkpoint: {dir: $work/run, every: 0}
device: $device
YAML
"$mpiexec" "$@" -np "$ranks" "$ptrain" --cfg "$work/kill.yaml" >"$work/out.txt" 2>&1 &
job=$!
for _ in $(seq 1 600); do
  [[ -s $work/run/metrics.jsonl ]] && break
  sleep 0.1
done
[[ -s $work/run/metrics.jsonl ]] || { echo "FAIL: no step finished"; cat "$work/out.txt"; kill -9 $job; exit 1; }
victim=""
for p in $(pgrep -f "ptrain --cfg $work/kill.yaml"); do
  [[ $p == "$job" ]] && continue
  if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$p; fi
done
[[ -n $victim ]] || { echo "FAIL: rank 1 not found"; kill -9 $job; exit 1; }
t0=$(date +%s.%N)
kill -9 "$victim"
for _ in $(seq 1 300); do
  kill -0 $job 2>/dev/null || break
  sleep 0.1
done
t1=$(date +%s.%N)
if kill -0 $job 2>/dev/null; then
  echo "FAIL: job still running 30 s after rank 1 was killed"; pkill -9 -f "ptrain --cfg $work/kill.yaml"; exit 1
fi
wait $job; rc=$?
secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
echo "job ended $secs s after kill -9 of rank 1 (pid $victim), exit status $rc"
sleep 0.5
left=$(pgrep -f "ptrain --cfg $work/kill.yaml" | wc -l)
fail=0
[[ $rc -ne 0 ]] || { echo "FAIL: exit status 0"; fail=1; }
grep -Eq "rank 1" "$work/out.txt" || { echo "FAIL: output does not name rank 1"; fail=1; }
[[ $left -eq 0 ]] || { echo "FAIL: $left ptrain processes left"; pkill -9 -f "ptrain --cfg $work/kill.yaml"; fail=1; }
grep -E "rank 1" "$work/out.txt" | head -3
exit $fail
