#!/usr/bin/env bash
# Regenerates the fuzz targets' seed corpus, tests/fuzz/corpus/<target>/: the configs of configs/
# and the small files that fuzz_make_corpus (make_corpus.cpp) writes with elbo's own writers.
# Usage: tests/fuzz/make_corpus.sh [build-dir]   (default build/, configured already)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
cmake --build "$build" --target fuzz_make_corpus
corpus=$root/tests/fuzz/corpus
rm -rf "$corpus"
"$build/tests/fuzz/fuzz_make_corpus" "$corpus"
cp "$root"/configs/*.yaml "$corpus/config/"
ls -l "$corpus"/*
