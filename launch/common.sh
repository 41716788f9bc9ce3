# Shared by the README's commands: install what is missing (Debian 12, apt-get, as root), then
# configure and build into build/ (incrementally; nothing is redone when nothing changed).
set -euo pipefail
ELBO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ELBO_ROOT/build}

# What building and training need (quickstart.sh).
elbo_packages=(build-essential cmake pkg-config libhdf5-dev libyaml-cpp-dev libopenblas-dev
               libcli11-dev libgtest-dev libopenmpi-dev openmpi-bin zlib1g-dev libpng-dev
               dataset-fashion-mnist)
# What the test suite needs on top (test.sh): python3 (standard library) for the scripts' checks,
# python3-h5py to read elbo's HDF5 outputs as a user would (tests/eval_test.sh), iproute2 for the
# network-namespace test hosts, procps (ps, pgrep) for the process checks, chromium to render the
# training report headless (tests/report_test.sh).
elbo_test_packages=(python3 python3-h5py iproute2 procps chromium)

# install_missing_packages [PACKAGE...]: apt-get installs those not installed yet (default: the
# packages of building and training).
install_missing_packages() {
  [ $# -gt 0 ] || set -- "${elbo_packages[@]}"
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "elbo: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build_elbo() {
  # Configuring every time is cheap once cached, recovers from a configure that failed before,
  # and picks up changed options.
  cmake -S "$ELBO_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
    -DELBO_WERROR="${ELBO_WERROR:-OFF}" ${ELBO_CMAKE_ARGS:-} >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)"
}

# Fashion-MNIST shards under data/fashion-mnist/{train,test}, written once.
prepare_fashion_mnist() {
  local src=/usr/share/datasets/fashion-mnist out=$ELBO_ROOT/data/fashion-mnist
  [ -f "$out/train/.complete" ] && [ -f "$out/test/.complete" ] && return 0
  rm -rf "$out"
  "$BUILD_DIR/elbo" prepare --from idx --images "$src/train-images-idx3-ubyte.gz" \
    --labels "$src/train-labels-idx1-ubyte.gz" --out "$out/train" --shards 4
  "$BUILD_DIR/elbo" prepare --from idx --images "$src/t10k-images-idx3-ubyte.gz" \
    --labels "$src/t10k-labels-idx1-ubyte.gz" --out "$out/test" --shards 1
  touch "$out/train/.complete" "$out/test/.complete"
}
