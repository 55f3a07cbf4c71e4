# tests/launch/mpi_case.sh — sourced by the mpirun shell tests (kill_rank.sh, timeout.sh,
# selftest_banner.sh): the small token file they train on.
#
#   make_corpus PTRAIN WORKDIR SEED LINES    -> WORKDIR/c.h5 (byte tokens of LINES random lines)
make_corpus() {
  local ptrain=$1 work=$2 seed=$3 lines=$4
  python3 - "$work/c.txt" "$seed" "$lines" <<'PY'
import random, sys
random.seed(int(sys.argv[2]))
w = "the cat sat on a mat and dog ran to see big red ball".split()
open(sys.argv[1], "w").write("\n".join(" ".join(random.choice(w) for _ in range(10)) for _ in range(int(sys.argv[3]))))
PY
  "$ptrain" prepare --input "$work/c.txt" --out "$work/c.h5" --tokenizer byte >/dev/null
}
