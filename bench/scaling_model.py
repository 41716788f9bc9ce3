#!/usr/bin/env python3
"""Data-parallel scaling on paper, from measured figures (docs/PERFORMANCE.md, "Scaling on paper").

    bench/scaling_model.py STEP.json [--allreduce SWEEP.json] [--bucket-mb 4] [--json]

STEP.json is `elbo bench CONFIG` output on one rank: its step breakdown (forward, backward,
optimizer, the rest) and parameter count. SWEEP.json, optional, is `elbo bench --allreduce` at two
or more ranks; a least-squares fit of time = latency + bytes / bandwidth over its rows gives the
link this machine measured, which is added as one more link.

Weak scaling: every rank keeps the per-rank batch of STEP.json, so n ranks do n times the samples
of one step in T(n) and the efficiency is T(1) / T(n). For each model size s (1, 10, 100 times the
parameters; compute and optimizer time scale with s, as an MLP's GEMMs do at a fixed batch), each
link (busbw B, per-message latency a) and n in 8, 64, 512:

  all-reduce of S bytes   A(S) = 2 log2(n) a + 2 (n-1)/n S / B
      (the bandwidth term of a ring, the latency term of recursive halving and doubling, which
      MPI libraries and NCCL's trees use at scale; a ring's 2 (n-1) a is far worse at 512 ranks)
  plain                   T = fwd + bwd + A(4P) + opt + rest
  overlap                 gradients all-reduced in buckets as backward finishes them (the best of
                          the --bucket-mb sizes: small buckets overlap more, each costs a latency): T = fwd + max(bwd, k latency terms + bandwidth term) + A(bucket) + opt + rest
                          (the last bucket can only start when backward ends)
  ZeRO-1 + overlap        reduce-scatter and all-gather instead of all-reduce (the same bytes), and
                          Adam on 1/n of the parameters: opt / n, and 8P (n-1)/n fewer bytes of moments
                          per rank

The GPU link (NVLink class) is paired with a GPU's compute: the step's FLOPs at an assumed
effective rate (--gpu-tflops), since a CPU core's step behind a 400 GB/s link says nothing.
"""
import argparse
import json
import math
import sys

LINKS = [  # name, busbw bytes/s, latency s, compute ("cpu": the measured step; "gpu": FLOPs / rate)
    ("10 Gbit/s Ethernet", 1.1e9, 30e-6, "cpu"),
    ("100 Gbit/s InfiniBand", 11.0e9, 3e-6, "cpu"),
    ("NVLink class (GPUs)", 400e9, 8e-6, "gpu"),
]
RANKS = [8, 64, 512]
SIZES = [1, 10, 100]


def fit_link(sweep):
    """Least squares time_us = a + bytes / B over the sweep's rows (busbw-equivalent B)."""
    rows = sweep["sizes"]
    n = rows[0]["ranks"]
    factor = 2 * (n - 1) / n if n > 1 else 1.0
    xs = [r["bytes"] * factor for r in rows]
    ys = [r["time_us"] * 1e-6 for r in rows]
    m = len(xs)
    mx, my = sum(xs) / m, sum(ys) / m
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    latency = max(my - slope * mx, 0.0)
    hops = 2 * math.log2(n) if n > 1 else 1.0
    return 1.0 / slope, latency / hops, n


def allreduce(n, nbytes, bw, lat):
    return 2 * math.log2(n) * lat + 2 * (n - 1) / n * nbytes / bw


def half(n, nbytes, bw, lat):  # a reduce-scatter or an all-gather
    return math.log2(n) * lat + (n - 1) / n * nbytes / bw


def model(step, s, n, bw, lat, buckets_mb, compute):
    fwd, bwd, opt, rest = (compute[k] * s for k in ("forward", "backward", "optimizer", "rest"))
    grad = 4.0 * step["parameters"] * s
    t1 = fwd + bwd + opt + rest
    plain = fwd + bwd + allreduce(n, grad, bw, lat) + opt + rest
    overlap = zero1 = math.inf
    best = {}
    for mb in buckets_mb:  # the best bucket size, as one would tune it (0: one bucket)
        bucket = grad if mb == 0 else min(mb * 2**20, grad)
        k = math.ceil(grad / bucket)
        last = allreduce(n, bucket, bw, lat)
        comm = k * 2 * math.log2(n) * lat + 2 * (n - 1) / n * grad / bw
        t = fwd + max(bwd, comm - last) + last + opt + rest
        if t < overlap:
            overlap, best["overlap"] = t, mb
        z_comm = k * math.log2(n) * lat + (n - 1) / n * grad / bw  # reduce-scatter, in buckets
        z_last = half(n, bucket, bw, lat)
        t = fwd + max(bwd, z_comm - z_last) + z_last + opt / n + half(n, grad, bw, lat) + rest
        if t < zero1:
            zero1, best["zero1_overlap"] = t, mb
    return t1, {"plain": plain, "overlap": overlap, "zero1_overlap": zero1}, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step")
    ap.add_argument("--allreduce")
    ap.add_argument("--bucket-mb", default="1,4,16,64,0",
                    help="bucket sizes to try, MiB (0: the whole gradient in one); the best is used")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="effective fp32 rate of one GPU for the GPU link's compute (default 20)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with open(a.step) as f:
        step = json.load(f)
    if step.get("bench") != "step" or step.get("ranks") != 1:
        sys.exit("scaling_model: STEP.json must be `elbo bench CONFIG` on one rank")
    b = step["breakdown_ms"]
    cpu = {k: b[k] * 1e-3 for k in ("forward", "backward", "optimizer")}
    cpu["rest"] = (b["step"] - b["forward"] - b["backward"] - b["optimizer"] - b["allreduce"]) * 1e-3
    # The GPU's compute: 3 passes of 2 FLOPs per weight per sample (forward, two in backward).
    flops = 6.0 * step["parameters"] * step["global_batch"]
    t_gpu = flops / (a.gpu_tflops * 1e12)
    gpu = {"forward": t_gpu / 3, "backward": 2 * t_gpu / 3, "optimizer": 0.0, "rest": 0.0}
    gpu["optimizer"] = 28.0 * step["parameters"] / 2.0e12  # Adam's 28 B/param at ~2 TB/s
    links = list(LINKS)
    if a.allreduce:
        with open(a.allreduce) as f:
            bw, lat, n = fit_link(json.load(f))
        links.append((f"this machine, measured ({n} ranks)", bw, lat, "cpu"))
    buckets = [float(v) for v in a.bucket_mb.split(",")]
    out = []
    for name, bw, lat, kind in links:
        compute = cpu if kind == "cpu" else gpu
        for s in SIZES:
            for n in RANKS:
                t1, t, best = model(step, s, n, bw, lat, buckets, compute)
                out.append({"link": name, "busbw_GBps": bw / 1e9, "latency_us": lat * 1e6,
                            "size": s, "params": step["parameters"] * s, "ranks": n,
                            "step1_ms": t1 * 1e3,
                            **{f"eff_{k}": t1 / v for k, v in t.items()},
                            **{f"bucket_mb_{k}": v for k, v in best.items()},
                            "samples_per_s_overlap": n * step["global_batch"] / t["zero1_overlap"]})
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"per-rank batch {step['global_batch']}, {step['parameters']} parameters at size 1; "
          "efficiency = T(1) / T(n), plain / overlap / ZeRO-1 + overlap (best "
          f"bucket of {a.bucket_mb} MiB each; above 100%: ZeRO-1 splits the optimizer's work)")
    for name, bw, lat, kind in links:
        print(f"\n{name}: busbw {bw / 1e9:.3g} GB/s, latency {lat * 1e6:.3g} us, "
              f"compute {'measured CPU step' if kind == 'cpu' else f'{a.gpu_tflops:g} TFLOP/s GPU'}")
        print(f"  {'size':>5} {'params':>10} {'T(1) ms':>8}" +
              "".join(f" {('n=' + str(n)):>20}" for n in RANKS))
        for s in SIZES:
            rows = [r for r in out if r["link"] == name and r["size"] == s]
            cells = "".join(f" {r['eff_plain']:6.0%}{r['eff_overlap']:7.0%}{r['eff_zero1_overlap']:7.0%}"
                            for r in rows)
            print(f"  {s:>4}x {rows[0]['params']:>10} {rows[0]['step1_ms']:8.3g}{cells}")


if __name__ == "__main__":
    main()
