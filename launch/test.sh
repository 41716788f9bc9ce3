#!/usr/bin/env bash
# The README's second command: install, build, and run the whole test suite with ctest.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_missing_packages "${elbo_packages[@]}" "${elbo_test_packages[@]}"
build_elbo
cd "$BUILD_DIR"
ctest --output-on-failure -j"$(nproc)" "$@"
