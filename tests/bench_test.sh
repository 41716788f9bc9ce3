#!/usr/bin/env bash
# `elbo bench`: its JSON parses and its figures agree with each other (the phases add up to the
# step, samples/s is the batch over the step time, busbw follows from bytes and time as nccl-tests
# defines it, the roofline's bound is the sum of its parts), at 1 rank and under mpirun at 2 (and
# 3 for the all-reduce, where busbw != algbw); it fails on bad input as train does, and it writes
# nothing: a run directory is byte-identical after it, a missing one is not created. No speed is
# asserted. Usage: bench_test.sh <elbo> <work-dir>; exits 77 (skip) without mpirun or the data.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 2 mpi
data=(data.train=data/train data.test=data/test train.threads=1)
short=(--warmup-steps 2 --windows 3 --window-steps 4 --breakdown-steps 5)

# A run directory with a checkpoint, metrics and a report, as training leaves it.
timeout 120 "$elbo" train "$configs/smoke.yaml" "${data[@]}" output.dir=runs/existing \
  train.max_steps=4 output.log_every=2 >train.log 2>&1 || { fail "training the run to keep"; show train.log; }
before=$(tree_digest runs/existing)

# check_step <json> <ranks> [roofline|buckets]: fields present and consistent.
check_step() {
  if "$PY" - "$@" <<'PY'; then ok "bench, $2 rank(s)${3:+, $3}: consistent"; else fail "bench, $2 rank(s)${3:+, $3}"; show "$1"; fi
import json, sys
d = json.load(open(sys.argv[1]))
ranks, roofline = int(sys.argv[2]), sys.argv[3:] == ["roofline"]
assert d["ranks"] == ranks and d["global_batch"] == 128 and d["threads_per_rank"] == 1, d
path = "single" if ranks == 1 else "buckets" if sys.argv[3:] == ["buckets"] else "allreduce"
assert d["gradients"] == path, (d["gradients"], path)
assert d["windows"] == 3 and d["window_steps"] == 4 and d["warmup_steps"] == 2
s, st = d["samples_per_s"], d["step_ms"]
assert len(s["windows"]) == 3 and s["min"] <= s["median"] <= s["max"] and s["min"] > 0
# The median window's rate is the global batch over its step time (3 windows: one median).
assert abs(s["median"] - 128 / (st["median"] / 1e3)) <= 1e-6 * s["median"], (s, st)
assert abs(s["spread"] - (s["max"] - s["min"]) / s["median"]) <= 1e-6
phases = ["data_wait", "input", "forward", "backward", "allreduce", "optimizer"]
for b in [d["breakdown_ms"]] + d["breakdown_ms_by_rank"]:
    assert b["steps"] == 5, b
    assert all(b[k] >= 0 for k in phases + ["other", "hidden_by_overlap", "step"]), b
    assert b["forward"] > 0 and b["backward"] > 0 and b["optimizer"] > 0, b
    # On a CPU nothing runs at once: the bucketed all-reduce's calls pause the backward phase
    # (MPI moves the data inside them, on the same core). The phases, the rest and the step
    # (timed by the loop's own clock) agree within 5% + 0.1 ms.
    assert b["hidden_by_overlap"] < 1e-6, b
    total = sum(b[k] for k in phases) + b["other"] - b["hidden_by_overlap"]
    assert abs(total - b["step"]) <= 0.05 * b["step"] + 0.1, (total, b)
assert len(d["breakdown_ms_by_rank"]) == ranks
if ranks > 1:  # the all-reduce's calls are timed, bucketed or not
    assert all(b["allreduce"] > 0 for b in d["breakdown_ms_by_rank"]), d["breakdown_ms_by_rank"]
assert len(d["peak_rss_bytes"]) == ranks
# 652824 parameters: with gradients and two moments at least 10 MB per rank.
assert d["parameters"] == 652824 and all(r > 10e6 for r in d["peak_rss_bytes"]), d["peak_rss_bytes"]
m = d["machine"]
assert m["cpu_model"] and m["cores"] >= 1 and m["blas"] and m["gpu"] is None and m["nodes"] == 1, m
assert ("roofline" in d) == roofline
if roofline:
    r = d["roofline"]
    assert r["rows_per_rank"] == 128 // ranks
    flops = sum(2 * g["M"] * g["N"] * g["K"] * g["calls_per_step"] for g in r["gemms"])
    assert sum(g["calls_per_step"] for g in r["gemms"]) == 11 and flops == r["gemm_flops_per_step"]
    gemm_ms = sum(g["calls_per_step"] * g["us_per_call"] for g in r["gemms"]) / 1e3
    assert abs(gemm_ms - r["bound_gemm_ms"]) <= 1e-6 * gemm_ms, (gemm_ms, r)
    for g in r["gemms"]:
        assert abs(g["GFLOPps"] - 2 * g["M"] * g["N"] * g["K"] / (g["us_per_call"] * 1e3)) <= 1e-6 * g["GFLOPps"]
    assert r["optimizer_bytes_per_step"] == 28 * d["parameters"]  # Adam: 7 floats a parameter
    bw = r["bandwidth_GBps"]
    assert bw > 0 and r["bandwidth_source"] == "stream_triad" and bw == r["stream_triad_GBps"]
    assert abs(r["bound_optimizer_ms"] - r["optimizer_bytes_per_step"] / bw / 1e6) <= 1e-6 * r["bound_optimizer_ms"]
    assert abs(r["bound_elementwise_ms"] - r["elementwise_bytes_per_step"] / bw / 1e6) <= 1e-6 * r["bound_elementwise_ms"]
    parts = r["bound_gemm_ms"] + r["bound_optimizer_ms"] + r["bound_elementwise_ms"]
    assert abs(parts - r["bound_step_ms"]) <= 1e-6 * parts
    assert r["measured_step_ms"] == st["median"]
    assert abs(r["bound_over_measured"] - r["bound_step_ms"] / r["measured_step_ms"]) <= 1e-6 * r["bound_over_measured"]
PY
}

run_bench() {  # run_bench <name> <command...>: stdout to <name>.json, one JSON object
  local name=$1; shift
  if ! timeout 300 "$@" >"$name.json" 2>"$name.err"; then fail "$name did not finish"; show "$name.err"; fi
}

run_bench one "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" output.dir=runs/existing "${short[@]}"
check_step one.json 1
run_bench roofline "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" output.dir=runs/absent "${short[@]}" --roofline
check_step roofline.json 1 roofline
run_bench two "${mpi[@]}" -np 2 "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" \
  output.dir=runs/existing "${short[@]}"
check_step two.json 2
run_bench two_buckets "${mpi[@]}" -np 2 "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" \
  output.dir=runs/existing "${short[@]}" distributed.bucket_mb=0.5
check_step two_buckets.json 2 buckets

# The BLAS kernels elbo ran with (machine.blas), from one.json, with the environment as it was
# given: a user's OPENBLAS_CORETYPE is what OpenBLAS runs; unset, on a CPU with AVX-512 or AVX2,
# OpenBLAS must not run its generic Prescott kernels (elbo restarts itself with the CPU's when
# the library does not know the CPU; core/backend.h, blas_core_to_request).
if "$PY" - one.json "${OPENBLAS_CORETYPE:-}" <<'PY'; then ok "BLAS kernels: the CPU's, or the user's choice"; else fail "BLAS kernels"; show one.json; fi
import json, sys
blas, chosen = json.load(open(sys.argv[1]))["machine"]["blas"], sys.argv[2]
if not blas.startswith("OpenBLAS") or "DYNAMIC_ARCH" not in blas:
    print("not an OpenBLAS that picks kernels at run time:", blas); sys.exit(0)
if chosen:
    assert chosen.lower() in blas.lower(), (chosen, blas)
else:
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"): flags = set(line.split(":", 1)[1].split()); break
    able = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags or {"avx2", "fma"} <= flags
    assert not able or "prescott" not in blas.lower(), blas
PY

# check_sweep <json> <ranks>: every size correct; algbw = bytes / time, busbw = algbw 2(n-1)/n.
check_sweep() {
  if "$PY" - "$@" <<'PY'; then ok "bench --allreduce, $2 rank(s): nccl-tests figures"; else fail "bench --allreduce, $2 rank(s)"; show "$1"; fi
import json, sys
d = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert d["ranks"] == n and d["wrong_sizes"] == 0 and d["communicator"] == ("mpi" if n > 1 else d["communicator"])
sizes = [r["bytes"] for r in d["sizes"]]
assert sizes == [4096 * 16 ** i for i in range(3)], sizes
factor = 2 * (n - 1) / n if n > 1 else 1
for r in d["sizes"]:
    assert r["correct"] and r["ranks"] == n and r["count"] * 4 == r["bytes"], r
    algbw = r["bytes"] / (r["time_us"] * 1e-6) / 1e9
    assert abs(r["algbw_GBps"] - algbw) <= 2e-3 * algbw, (r, algbw)  # time_us has 3 decimals
    assert abs(r["busbw_GBps"] - r["algbw_GBps"] * factor) <= 1e-5 * r["busbw_GBps"], r
    assert r["time_avg_us"] <= r["time_us"] + 1e-3, r
PY
}
sweep=(bench --allreduce --min-bytes 4K --max-bytes 1M --factor 16 --iters 5 --warmup 2)
run_bench sweep2 "${mpi[@]}" -np 2 "$elbo" "${sweep[@]}"
check_sweep sweep2.json 2
run_bench sweep3 "${mpi[@]}" -np 3 "$elbo" "${sweep[@]}"
check_sweep sweep3.json 3

# Bad input, as train meets it: one line, exit 2.
expect_error bad_key 2 "unknown key 'train.nonsense'" \
  "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" train.nonsense=1
expect_error bad_value 2 "train.batch_size" \
  "$elbo" bench "$configs/fashion_mnist.yaml" "${data[@]}" train.batch_size=many
expect_error missing_config 2 "cannot read config file" "$elbo" bench no_such.yaml
expect_error unknown_flag 2 "--fast" "$elbo" bench "$configs/fashion_mnist.yaml" --fast
expect_error no_config 2 "needs a CONFIG" "$elbo" bench
expect_error bad_data 2 "data/nothing" "$elbo" bench "$configs/fashion_mnist.yaml" \
  data.train=data/nothing train.threads=1
expect_error zero_windows 2 "--windows" "$elbo" bench "$configs/fashion_mnist.yaml" --windows 0
expect_error bad_bytes 2 "not a byte count" "$elbo" bench --allreduce --max-bytes 3X

# Nothing written: the run directory as it was, the absent one still absent.
if [ "$(tree_digest runs/existing)" = "$before" ]; then ok "runs/existing byte-identical after bench"
else fail "bench changed runs/existing"; fi
if [ ! -e runs/absent ]; then ok "bench created no run directory"; else fail "bench created runs/absent"; fi
exit "$failed"
