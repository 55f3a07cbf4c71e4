#!/usr/bin/env bash
# Installs every build, test and demo dependency of ptrain from Debian packages.
# Safe to re-run: packages already present are skipped, apt-get update runs only when
# something is missing. Needs root (or sudo). Usage: scripts/install_deps.sh [--demo]
#   --demo  also installs npm (the demo fetches the nlp-corpus text package with `npm pack`)
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-dev
  libyaml-cpp-dev
  libboost-program-options-dev libboost-context-dev
  libgtest-dev libgmock-dev
  libopenblas-dev libopenblas-openmp-dev
  nlohmann-json3-dev libfmt-dev
  python3 python3-numpy python3-h5py python3-yaml python3-torch
)

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm only for the demo, and only when no npm is on the machine (a NodeSource nodejs
# ships its own npm and conflicts with Debian's npm package).
if [[ "${1:-}" == "--demo" ]] && ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi

if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all packages present"
fi

# PyTorch (the reference and benchmark peer) must run on OpenBLAS, not the reference BLAS.
if command -v update-alternatives >/dev/null 2>&1; then
  cur=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/{print $2}')
  case "$cur" in
    *openblas*) ;;
    *) echo "install_deps: warning: libblas.so.3 points to '${cur:-?}', not OpenBLAS (PyTorch comparisons would be unfair)" >&2 ;;
  esac
fi
