#!/usr/bin/env bash
# The README's first command: install, build, prepare Fashion-MNIST, train configs/fashion_mnist.yaml.
# Each run trains into a fresh runs/fashion_mnist_mlp/<timestamp> so earlier runs are kept.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_missing_packages
build_elbo
cd "$ELBO_ROOT"
prepare_fashion_mnist
exec "$BUILD_DIR/elbo" train configs/fashion_mnist.yaml \
  "output.dir=runs/fashion_mnist_mlp/$(date -u +%Y%m%d-%H%M%S)" "$@"
