#!/usr/bin/env bash
# tests/launch/commcheck.sh — `ptrain commcheck` under mpirun (ctest case, label mpi).
#
#   commcheck.sh MPIEXEC PTRAIN DEVICE [mpirun flags...]
#
# 2 ranks, DEVICE tensors, sizes 4K..64K: the JSON lists every collective at every size with a
# positive bandwidth and a passing check, and says ok; --min-bytes moves the first size and
# --iters is reported; the text form ends with the verdict; bad input exits 2 with a message.
set -uo pipefail
mpiexec=$1 ptrain=$2 device=$3
shift 3
fail=0
json=$("$mpiexec" "$@" -np 2 "$ptrain" commcheck --device "$device" --max-bytes 64K --iters 2 --json) ||
  { echo "FAIL: commcheck --json exited non-zero"; fail=1; }
python3 - "$json" <<'PY' || fail=1
import json, sys
j = json.loads(sys.argv[1])
want = ["all_reduce(sum)", "all_reduce(max)", "all_reduce_async(sum)", "all_gather", "reduce_scatter",
        "broadcast(root 0)", "broadcast(root 1)", "ring isend/irecv"]
assert j["ok"] is True and j["ranks"] == 2, j
for size in (4096, 16384, 65536):
    got = [r["collective"] for r in j["results"] if r["bytes"] == size]
    assert got == want, (size, got)
for r in j["results"]:
    assert r["ok"] and r["time_s"] > 0 and r["busbw_gbps"] > 0 and r["algbw_gbps"] > 0, r
print(f"commcheck json: {len(j['results'])} results, all ok")
PY
# --min-bytes and --iters: the sizes start at 16K, and the run says how many timed calls it made
json=$("$mpiexec" "$@" -np 2 "$ptrain" commcheck --device "$device" --min-bytes 16K --max-bytes 64K --iters 3 --json) ||
  { echo "FAIL: commcheck --min-bytes --json exited non-zero"; fail=1; }
python3 - "$json" <<'PY' || fail=1
import json, sys
j = json.loads(sys.argv[1])
assert sorted({r["bytes"] for r in j["results"]}) == [16384, 65536], j["results"]
assert j["iters"] == 3 and j["ok"] is True, j
PY
text=$("$mpiexec" "$@" -np 2 "$ptrain" commcheck --device "$device" --max-bytes 16K --iters 1) ||
  { echo "FAIL: commcheck exited non-zero"; fail=1; }
echo "$text" | tail -3
echo "$text" | grep -q "^verdict: every collective correct at every size" || { echo "FAIL: no verdict"; fail=1; }
"$ptrain" commcheck --device tpu >/dev/null 2>"${TMPDIR:-/tmp}/commcheck_err.txt"; rc=$?
[[ $rc -eq 2 ]] && grep -q "\-\-device tpu" "${TMPDIR:-/tmp}/commcheck_err.txt" ||
  { echo "FAIL: --device tpu: exit $rc"; cat "${TMPDIR:-/tmp}/commcheck_err.txt"; fail=1; }
"$ptrain" commcheck --max-bytes 3 >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || { echo "FAIL: --max-bytes 3: exit $rc"; fail=1; }
"$ptrain" commcheck --iters 0 >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || { echo "FAIL: --iters 0: exit $rc"; fail=1; }
exit $fail
