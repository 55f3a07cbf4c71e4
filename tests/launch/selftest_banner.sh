#!/usr/bin/env bash
# tests/launch/selftest_banner.sh — parallel.selftest has its effect (ctest case, label mpi).
#
#   selftest_banner.sh MPIEXEC PTRAIN WORKDIR DEVICE [mpirun flags...]
#
# Two 2-rank runs (dp 2, 2 steps) on DEVICE: with the default (parallel.selftest: true) the
# banner reports the self-test of the world and dp groups on DEVICE tensors; with
# parallel.selftest: false it says the test was skipped. Both train (exit 0).
set -uo pipefail
mpiexec=$1 ptrain=$2 work=$3 device=$4
shift 4
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/mpi_case.sh"
make_corpus "$ptrain" "$work" 4 2000 || exit 1
cat >"$work/cfg.yaml" <<YAML
model: {arch: llama, vocab_size: 256, hidden: 32, layers: 2, heads: 4, ffn_hidden: 64, max_seq_len: 32}
train: {seq_len: 32, micro_batch: 2, global_batch: 4, steps: 2, precision: fp32, threads: 1, log_every: 1}
optim: {warmup_steps: 1}
data: {path: $work/c.h5, shuffle: false}
checkpoint: {dir: $work/run, every: 0}
device: $device
YAML
fail=0
"$mpiexec" "$@" -np 2 "$ptrain" --cfg "$work/cfg.yaml" >"$work/on.txt" 2>&1 || { echo "FAIL: run with the self-test"; fail=1; }
grep -q "communicator self-test passed in .* ms on $device tensors: world (2 ranks), dp (2 ranks)" "$work/on.txt" ||
  { echo "FAIL: no self-test report in the banner"; cat "$work/on.txt"; fail=1; }
"$mpiexec" "$@" -np 2 "$ptrain" --cfg "$work/cfg.yaml" --set parallel.selftest=false --set "checkpoint.dir=$work/run2" \
  >"$work/off.txt" 2>&1 || { echo "FAIL: run without the self-test"; fail=1; }
grep -q "communicator self-test skipped (parallel.selftest: false)" "$work/off.txt" ||
  { echo "FAIL: parallel.selftest: false did not skip the self-test"; cat "$work/off.txt"; fail=1; }
grep -q "self-test passed" "$work/off.txt" && { echo "FAIL: the self-test ran with parallel.selftest: false"; fail=1; }
grep -h "self-test" "$work/on.txt" "$work/off.txt"
exit $fail
