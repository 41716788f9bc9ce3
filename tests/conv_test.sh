#!/usr/bin/env bash
# Conv models end to end, on a small conv config (channels [8, 16], dense [32], latent 6):
#   - 1, 2 and 3 ranks give the same loss at each of 30 steps, and the same test -ELBO;
#   - stop at 12 and resume to 30 gives the parameters of an uninterrupted 30-step run, bit for bit;
#   - data whose shape does not fit (a 2-D /x), conv sizes that cannot be built, and a checkpoint
#     of another model type are each one `elbo: error:` line, exit 2.
# Usage: conv_test.sh <elbo> <work-dir> <h5_tool>; exits 77 (skip) without mpirun or Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
h5_tool=$(realpath "$3")
setup_integration_test "$1" "$2" 3 mpi
# A test set of 500 images keeps the evaluation short.
"$PY" - /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz <<'PY' || exit 1
import gzip, struct, sys
raw = gzip.open(sys.argv[1]).read()
with open("test500.idx", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 500, 28, 28))
    f.write(raw[16:16 + 500 * 784])
PY
"$elbo" prepare --images test500.idx --out data/test500 >/dev/null || exit 1
common=(train "$configs/fashion_mnist_conv.yaml" data.train=data/train data.test=data/test500
        "model.conv.channels=[8, 16]" "model.encoder=[32]" "model.decoder=[32]" model.latent=6
        train.batch_size=64 train.threads=1 output.log_every=1 device=cpu)
run one 1 train.max_steps=30
run two 2 train.max_steps=30
run three 3 train.max_steps=30
compare_runs two one 30 test
compare_runs three one 30 test

# Exact resume.
run part 1 train.max_steps=12 checkpoint.every_steps=12
run part 1 train.max_steps=30 --resume auto
h=$(info runs/part/checkpoints/last.h5 params_fnv1a64) H=$(info runs/one/checkpoints/last.h5 params_fnv1a64)
if [ -n "$H" ] && [ "$h" = "$H" ]; then
  ok "conv: stop at 12 + resume to 30 equals the uninterrupted run bit for bit (hash $h)"
else
  fail "conv resume: hash '$h', uninterrupted '$H'"; show part.log
fi

# Bad input.
mkdir -p data/flat && "$h5_tool" shard data/flat/x.h5 u8 200 784 contiguous ||
  { fail "h5_tool"; }
expect_error flat 2 "model.type conv needs images" \
  "$elbo" "${common[@]}" data.train=data/flat data.test= output.dir=runs/flat
expect_error big_kernel 2 "key 'model.conv' does not fit images of shape [28, 28]: encoder.conv.0: kernel 40 is larger than the padded input 30x30 (input 28x28, padding 1) (override 'model.conv.kernel=40')" \
  "$elbo" "${common[@]}" model.conv.kernel=40 output.dir=runs/big_kernel
timeout -k 5 120 "$elbo" train "$configs/smoke.yaml" data.train=data/train data.test= \
  train.max_steps=5 train.threads=1 output.dir=runs/mlp >mlp.log 2>&1 || { fail "mlp run"; show mlp.log; }
expect_error other_type 2 "runs/mlp/checkpoints/last.h5" \
  "$elbo" "${common[@]}" output.dir=runs/other --resume runs/mlp/checkpoints/last.h5
for d in flat big_kernel other; do
  [ -e "runs/$d" ] && fail "runs/$d was created by a refused run"
done
exit $failed
