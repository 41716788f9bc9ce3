#!/usr/bin/env bash
# Data-parallel scaling across test hosts (network namespaces, tests/netns/hosts.sh) at three link
# rates: full veth speed, 1 Gbit/s and 100 Mbit/s. The kernel has no netem; the rate is set with a
# token bucket (tc tbf) on both directions of each host's link: the root-side veth (egress towards
# the host) and eth0 inside the host (its egress). Per rate it measures
#   - the link: a raw TCP probe, both directions at once (python3; skipped without it);
#   - all-reduce (build/allreduce_bench, 2 hosts x 1 rank): 4 KB, the model's gradient (652824
#     floats = 2611296 B) and a 4 KB..4 MB sweep;
#   - training (configs/fashion_mnist.yaml, 200 steps, 1 thread per rank): 2 hosts x 1 rank and
#     2 hosts x 2 ranks, against 1 process in one host (run twice; no network in it).
# Per rate also: the same all-reduces and 2x1 training with --mca btl_tcp_links 2 (two TCP
# connections per pair of ranks instead of one), and 2x1 training with ZeRO-1, with bfloat16
# gradients, with both, and with the bucketed all-reduce (alone and with bfloat16). At full speed it also measures
# mpi_yield_when_idle 1 against 0 (4 KB all-reduce, 2x1 and 2x2, 4 ranks in one host over shared
# memory as a control, and 2x2 training).
# Prints a markdown table and the fit of T = 2(n-1)a + 2(n-1)/n S/B to the all-reduce points;
# keeps the raw records in WORK/results.jsonl. About 5 minutes on a 2-core machine.
#
#   bench/netns_scaling.sh [WORK]        (root; WORK defaults to a new /tmp/elbo-netns-scaling.*)
#   env: STEPS=200 (2..468), RATES="full 1gbit 100mbit",
#        ELBO=build/elbo, ALLREDUCE_BENCH=build/allreduce_bench
# Exits 77 without root/namespaces, mpirun, unshare or Fashion-MNIST.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
elbo=$(realpath "${ELBO:-$root/build/elbo}") bench=$(realpath "${ALLREDUCE_BENCH:-$root/build/allreduce_bench}")
steps=${STEPS:-200} rates=${RATES:-"full 1gbit 100mbit"}
src=/usr/share/datasets/fashion-mnist
config=$root/configs/fashion_mnist.yaml
grad_bytes=2611296   # 652824 float gradients
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
# shellcheck source=tests/netns/hosts.sh
. "$root/tests/netns/hosts.sh"
if [ ! -x "$elbo" ] || [ ! -x "$bench" ]; then
  echo "bench: build first: cmake --build build (needs $elbo, $bench)" >&2; exit 2
fi
command -v mpirun >/dev/null || { echo "skip - no mpirun"; exit 77; }
command -v unshare >/dev/null || { echo "skip - no unshare (util-linux)"; exit 77; }
command -v tc >/dev/null || { echo "skip - no tc (iproute2)"; exit 77; }
"$PY" -c 'import json' 2>/dev/null || { echo "skip - no python3 (for the tables)"; exit 77; }
[ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "skip - no $src"; exit 77; }
netns_supported || { echo "skip - $netns_reason"; exit 77; }
# One epoch of Fashion-MNIST is 468 steps of 128; two step records, the second one is measured.
if ! [[ $steps =~ ^[0-9]+$ ]] || [ "$steps" -lt 2 ] || [ "$steps" -gt 468 ]; then
  echo "bench: STEPS must be 2..468 (one epoch)" >&2; exit 2
fi
log_every=$((steps / 2))

work=${1:-$(mktemp -d /tmp/elbo-netns-scaling.XXXXXX)}
mkdir -p "$work" && work=$(realpath "$work") && cd "$work" || exit 1
results=$work/results.jsonl
: >"$results"
t_start=$EPOCHREALTIME
note() { printf '# [%5.0f s] %s\n' "$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "$*"; }

if [ ! -d data/train ] || [ ! -d data/test ]; then
  rm -rf data
  if ! "$elbo" prepare --images "$src/train-images-idx3-ubyte.gz" --out data/train --shards 4 >/dev/null ||
     ! "$elbo" prepare --images "$src/t10k-images-idx3-ubyte.gz" --out data/test >/dev/null; then
    echo "bench: elbo prepare failed" >&2; exit 1
  fi
fi

# Every command runs in the background under timeout, and the script waits for it: a TERM or INT
# reaches the trap at once, and netns_before_down ends the command before the hosts go away.
current=""
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }
netns_before_down() {
  [ -n "$current" ] && alive "$current" || return 0
  kill -TERM "$current" 2>/dev/null   # timeout passes it on, then kills after -k 5 s
  local i
  for ((i = 0; i < 50; i++)); do alive "$current" || return 0; sleep 0.2; done
  kill -KILL "$current" 2>/dev/null
  return 0
}
bounded() {  # bounded SECONDS OUT CMD...: CMD's stdout and stderr to OUT; returns CMD's status
  local secs=$1 out=$2 rc; shift 2
  timeout -k 5 "$secs" "$@" >"$out" 2>&1 &
  current=$!
  wait "$current"; rc=$?
  current=""
  return "$rc"
}

netns_up 2 "$work" 2 || { echo "bench: could not make the test hosts" >&2; exit 1; }
note "hosts ${netns_ns[1]} (${netns_ip[1]}), ${netns_ns[2]} (${netns_ip[2]}), bridge $netns_bridge"
mpi=(mpirun "${netns_mpirun[@]}" --wdir "$work")
# Two TCP connections per pair of ranks.
links2=("${mpi[@]}" --mca btl_tcp_links 2)
# The same flags with mpi_yield_when_idle 0: waiting ranks busy-poll.
spin=("${mpi[@]}")
for i in "${!spin[@]}"; do [ "${spin[i]}" = mpi_yield_when_idle ] && spin[i + 1]=0; done
train=("$elbo" train "$config" data.train=data/train data.test=data/test train.epochs=1
       "train.max_steps=$steps" "output.log_every=$log_every" train.threads=1)

record() { echo "$1" >>"$results"; }
# allreduce RATE TAG ITERS WARMUP LAUNCH-ARRAY-NAME PPR MIN MAX: one record per size (PPR -: no
# --map-by).
allreduce() {
  local rate=$1 tag=$2 iters=$3 warm=$4 ppr=$6 lo=$7 hi=$8 out=$work/ar-$1-$2.log map=()
  local -n launch=$5
  [ "$ppr" = - ] || map=(--map-by "ppr:$ppr:node")
  if ! bounded 120 "$out" "${launch[@]}" "${map[@]}" "$bench" --min-bytes "$lo" \
      --max-bytes "$hi" --factor 4 --iters "$iters" --warmup "$warm"; then
    note "FAILED: all-reduce $rate $tag (see $out)"; return 1
  fi
  grep '"bytes"' "$out" | "$PY" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({"kind": "allreduce", "rate": sys.argv[1], "tag": sys.argv[2], **r}))' \
    "$rate" "$tag" >>"$results"
  grep -q '"correct":false' "$out" && note "WRONG all-reduce result: $rate $tag"
  return 0
}
# training RATE TAG NPROC-LABEL CMD...: the samples/s of the last step record.
training() {
  local rate=$1 tag=$2 ranks=$3 dir=runs/$1-$2; shift 3
  rm -rf "$dir"
  if ! bounded 240 "$work/train-$rate-$tag.log" "$@" "${train[@]}" "output.dir=$dir"; then
    note "FAILED: training $rate $tag (see $work/train-$rate-$tag.log)"; return 1
  fi
  if [ "$ranks" -gt 1 ] && ! grep -q "communicator mpi, $ranks rank" "$work/train-$rate-$tag.log"; then
    note "FAILED: training $rate $tag did not run on $ranks ranks"; return 1
  fi
  "$PY" - "$dir/metrics.jsonl" "$rate" "$tag" "$ranks" >>"$results" <<'PY' ||
import json, sys
path, rate, tag, ranks = sys.argv[1:5]
steps = [r for r in map(json.loads, open(path)) if r["type"] == "step"]
if not steps:
    sys.exit("no step records in " + path)
last = steps[-1]
print(json.dumps({"kind": "train", "rate": rate, "tag": tag, "ranks": int(ranks), "step": last["step"],
                  "samples_per_s": last["samples_per_s"], "step_ms": 128e3 / last["samples_per_s"],
                  "first_window_samples_per_s": steps[0]["samples_per_s"]}))
PY
    { note "FAILED: training $rate $tag: no step record"; return 1; }
  note "train $rate $tag: $(tail -n 1 "$results" | "$PY" -c 'import json, sys
r = json.load(sys.stdin); print("%.0f samples/s, %.2f ms/step" % (r["samples_per_s"], r["step_ms"]))')"
}

# The link rate, on both directions of both hosts' links. The burst is the smallest that gives the
# nominal rate both ways at once on a 2-core VM (timer and softirq delays): 2 frames at 100 Mbit/s,
# so that a small message pays its serialisation time as on a real link; 1 ms at 1 Gbit/s (240 us,
# 30000 B, gave only ~600 Mbit/s each way). latency 50 ms is the queue (no drops at these loads).
shape() {
  local rate=$1 burst i
  for ((i = 1; i <= 2; i++)); do
    tc qdisc del dev "${netns_veth[i]}" root 2>/dev/null
    ip netns exec "${netns_ns[i]}" tc qdisc del dev eth0 root 2>/dev/null
  done
  [ "$rate" = full ] && return 0
  case $rate in
    100mbit) burst=3000 ;;
    1gbit) burst=125000 ;;
    *) echo "bench: unknown rate $rate" >&2; return 1 ;;
  esac
  for ((i = 1; i <= 2; i++)); do
    tc qdisc add dev "${netns_veth[i]}" root tbf rate "$rate" burst "$burst" latency 50ms || return 1
    ip netns exec "${netns_ns[i]}" tc qdisc add dev eth0 root tbf rate "$rate" burst "$burst" \
      latency 50ms || return 1
  done
}
drops() {  # packets the shapers dropped, all four
  local i
  for ((i = 1; i <= 2; i++)); do
    tc -s qdisc show dev "${netns_veth[i]}"; ip netns exec "${netns_ns[i]}" tc -s qdisc show dev eth0
  done | grep -o 'dropped [0-9]*' | awk '{ s += $2 } END { print s + 0 }'
}

# A raw TCP stream each way at once (h1 -> h2 and h2 -> h1), BYTES each: Mbit/s of payload.
cat >"$work/probe.py" <<'PY'
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); s.settimeout(20)
    c, _ = s.accept(); c.settimeout(20)
    n, t0 = 0, time.perf_counter()
    while True:
        b = c.recv(1 << 20)
        if not b: break
        n += len(b)
    print("%.1f" % (n * 8 / (time.perf_counter() - t0) / 1e6))
else:
    left = int(sys.argv[4]); c = socket.create_connection((host, port), timeout=20)
    buf = b"\0" * (1 << 20)
    while left > 0:
        k = min(left, len(buf)); c.sendall(buf[:k]); left -= k
    c.close()
PY
probe() {
  local rate=$1 bytes i pids=() ok=1
  case $rate in 100mbit) bytes=12500000 ;; 1gbit) bytes=125000000 ;; *) bytes=1000000000 ;; esac
  for ((i = 1; i <= 2; i++)); do
    ip netns exec "${netns_ns[i]}" timeout 25 "$PY" "$work/probe.py" server "${netns_ip[i]}" 5201 \
      >"$work/probe-$rate-$i.out" 2>&1 &
    pids+=($!)
  done
  sleep 0.5
  for ((i = 1; i <= 2; i++)); do
    ip netns exec "${netns_ns[3 - i]}" timeout 25 "$PY" "$work/probe.py" client "${netns_ip[i]}" 5201 \
      "$bytes" >/dev/null 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || ok=0; done
  [ "$ok" = 1 ] || { note "probe $rate failed"; return 1; }
  local to1 to2
  to1=$(cat "$work/probe-$rate-1.out") to2=$(cat "$work/probe-$rate-2.out")
  record "{\"kind\": \"probe\", \"rate\": \"$rate\", \"to_h1_mbit\": $to1, \"to_h2_mbit\": $to2}"
  note "probe $rate: $to2 Mbit/s h1->h2, $to1 Mbit/s h2->h1 (at once)"
}

# 1 process in host 1: the baseline (no network in it), twice.
for rep in 1 2; do
  training base "1x1-$rep" 1 ip netns exec "${netns_ns[1]}"
done

for rate in $rates; do
  shape "$rate" || { note "could not shape the links to $rate"; exit 1; }
  note "rate $rate"
  probe "$rate"
  case $rate in 100mbit) big_iters=5 ;; 1gbit) big_iters=10 ;; *) big_iters=20 ;; esac
  allreduce "$rate" 4k 200 20 mpi 1 4096 4096
  allreduce "$rate" grad "$big_iters" 1 mpi 1 "$grad_bytes" "$grad_bytes"
  allreduce "$rate" sweep "$big_iters" 1 mpi 1 4096 4M
  allreduce "$rate" 4k-links2 200 20 links2 1 4096 4096
  allreduce "$rate" grad-links2 "$big_iters" 1 links2 1 "$grad_bytes" "$grad_bytes"
  if [ "$rate" = full ]; then  # busy-polling ranks against yielding ones
    allreduce full 4k-2x1-spin 200 20 spin 1 4096 4096
    allreduce full 4k-2x2 200 20 mpi 2 4096 4096
    allreduce full 4k-2x2-spin 200 20 spin 2 4096 4096
    for y in 1 0; do  # control: 4 ranks in host 1, shared memory only, no packets
      # shellcheck disable=SC2034,SC2054 # used through allreduce's nameref; Open MPI's list syntax
      oneh=(ip netns exec "${netns_ns[1]}" mpirun -np 4 --oversubscribe --bind-to none --mca btl self,vader
            --mca mpi_yield_when_idle "$y")
      allreduce full "4k-1host-4ranks-yield$y" 200 20 oneh - 4096 4096
    done
  fi
  note "all-reduce $rate done ($(drops) packets dropped by the shapers so far)"
  training "$rate" 2x1 2 "${mpi[@]}" --map-by ppr:1:node
  training "$rate" 2x2 4 "${mpi[@]}" --map-by ppr:2:node
  training "$rate" 2x1-links2 2 "${links2[@]}" --map-by ppr:1:node
  # The levers of distributed: (ZeRO-1, bfloat16 gradients) on the same 2x1 run.
  plain=("${train[@]}")
  train=("${plain[@]}" distributed.shard_optimizer=true)
  training "$rate" 2x1-zero1 2 "${mpi[@]}" --map-by ppr:1:node
  train=("${plain[@]}" distributed.grad_compression=bf16)
  training "$rate" 2x1-bf16 2 "${mpi[@]}" --map-by ppr:1:node
  train=("${plain[@]}" distributed.shard_optimizer=true distributed.grad_compression=bf16)
  training "$rate" 2x1-zero1-bf16 2 "${mpi[@]}" --map-by ppr:1:node
  train=("${plain[@]}" distributed.bucket_mb=0.5)
  training "$rate" 2x1-buckets 2 "${mpi[@]}" --map-by ppr:1:node
  train=("${plain[@]}" distributed.bucket_mb=0.5 distributed.grad_compression=bf16)
  training "$rate" 2x1-buckets-bf16 2 "${mpi[@]}" --map-by ppr:1:node
  train=("${plain[@]}")
  [ "$rate" = full ] && training full 2x2-spin 4 "${spin[@]}" --map-by ppr:2:node
done
record "{\"kind\": \"drops\", \"packets\": $(drops)}"
shape full

note "done; raw records in $results"
"$PY" - "$results" "$grad_bytes" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
G = int(sys.argv[2])
def find(kind, rate, tag, size=None):
    for r in recs:
        if (r["kind"] == kind and r["rate"] == rate and r["tag"] == tag
                and (size is None or r["bytes"] == size)):
            return r
ar = lambda rate, tag, size=None: find("allreduce", rate, tag, size)
tr = lambda rate, tag: find("train", rate, tag)
base = [r["samples_per_s"] for r in recs if r["kind"] == "train" and r["rate"] == "base"]
if not base:
    sys.exit("no baseline run: see the train-base-*.log files")
b1 = sum(base) / len(base)
comp = 128e3 / b1
rates = [r for r in ["full", "1gbit", "100mbit"] if any(x.get("rate") == r for x in recs)]
names = {"full": "full veth", "1gbit": "1 Gbit/s", "100mbit": "100 Mbit/s"}
def us(t): return "%.0f us" % t if t < 1e4 else "%.1f ms" % (t / 1e3)
def ms(t_us): return "%.2f ms" % (t_us / 1e3) if t_us < 1e5 else "%.0f ms" % (t_us / 1e3)
def cell_ar(rate, tag, size, bw=False):
    r = ar(rate, tag, size)
    if not r: return "n/a"
    return "%s (%.3f GB/s)" % (ms(r["time_us"]), r["busbw_GBps"]) if bw else us(r["time_us"])
def cell_train(rate, tag, n):
    r = tr(rate, tag)
    if not r: return "n/a"
    return "%.1f ms, %.0f%%" % (r["step_ms"], 100 * r["samples_per_s"] / (n * b1))
def fit(rate, suffix=""):  # n = 2: T = 2 a + S / B, through the 4 KB and 2.6 MB points
    a, g = ar(rate, "4k" + suffix, 4096), ar(rate, "grad" + suffix, G)
    if not (a and g): return None
    B = (G - 4096) / ((g["time_us"] - a["time_us"]) * 1e-6)   # bytes/s
    return (a["time_us"] * 1e-6 - 4096 / B) / 2, B

print()
print("1 process (baseline, host 1, 1 thread): %.0f samples/s = %.2f ms/step (runs: %s)"
      % (b1, comp, ", ".join("%.0f" % b for b in base)))
print()
print("| link rate | 4 KB all-reduce | 2.6 MB all-reduce (busbw) | 2x1 step ms, efficiency | 2x2 step ms, efficiency |")
print("|---|---|---|---|---|")
for rate in rates:
    print("| %s | %s | %s | %s | %s |" % (names[rate], cell_ar(rate, "4k", 4096), cell_ar(rate, "grad", G, True),
                                        cell_train(rate, "2x1", 2), cell_train(rate, "2x2", 4)))
print()
print("With --mca btl_tcp_links 2 (two TCP connections per pair of ranks):")
print()
print("| link rate | 4 KB all-reduce | 2.6 MB all-reduce (busbw) | 2x1 step ms, efficiency |")
print("|---|---|---|---|")
for rate in rates:
    print("| %s | %s | %s | %s |" % (names[rate], cell_ar(rate, "4k-links2", 4096),
                                   cell_ar(rate, "grad-links2", G, True), cell_train(rate, "2x1-links2", 2)))
print()
print("2x1 training with distributed.shard_optimizer (ZeRO-1), distributed.grad_compression: bf16 and distributed.bucket_mb:")
print()
print("| link rate | plain | shard_optimizer | grad_compression bf16 | both | bucket_mb 0.5 | bucket_mb 0.5 + bf16 |")
print("|---|---|---|---|---|---|---|")
for rate in rates:
    print("| %s | %s | %s | %s | %s | %s | %s |" % (names[rate], cell_train(rate, "2x1", 2), cell_train(rate, "2x1-zero1", 2),
                                        cell_train(rate, "2x1-bf16", 2), cell_train(rate, "2x1-zero1-bf16", 2),
                                        cell_train(rate, "2x1-buckets", 2), cell_train(rate, "2x1-buckets-bf16", 2)))
print()
print("Fit of T = 2(n-1)a + 2(n-1)/n S/B through the 4 KB and 2.6 MB points (n = 2: T = 2a + S/B):")
print()
print("| link rate | raw TCP, both ways at once | a, B (1 link) | a, B (btl_tcp_links 2) | 4 MB sweep point (1 link) |")
print("|---|---|---|---|---|")
for rate in rates:
    p = next((r for r in recs if r["kind"] == "probe" and r["rate"] == rate), None)
    pc = "%.0f / %.0f Mbit/s" % (p["to_h2_mbit"], p["to_h1_mbit"]) if p else "n/a"
    cells = []
    for suf in ("", "-links2"):
        f = fit(rate, suf)
        cells.append("%.1f us, %.0f Mbit/s" % (f[0] * 1e6, f[1] * 8e-6) if f else "n/a")
    s4 = ar(rate, "sweep", 4 << 20)
    sc = "%s, %.3f GB/s busbw" % (ms(s4["time_us"]), s4["busbw_GBps"]) if s4 else "n/a"
    print("| %s | %s | %s | %s | %s |" % (names[rate], pc, cells[0], cells[1], sc))
print()
# Predictions. a: per-message software latency, which the link rate hardly changes: the
# full-speed fit's (at the shaped rates the 4 KB point is mostly serialisation, and the fitted a
# is within noise of 0 or below). B: what the wire gives, the larger of the two fits' B per rate.
fa = fit("full")
a0 = max(fa[0], 0.0) if fa else 0.0
wire = {}
for rate in rates:
    bs = [f[1] for f in (fit(rate), fit(rate, "-links2")) if f]
    if bs: wire[rate] = max(bs)
T = lambda n, S, B: 2 * (n - 1) * a0 + 2 * (n - 1) / n * S / B
print("Prediction: all-reduce per step T(n, S) = 2(n-1)a + 2(n-1)/n S/B with a = %.1f us (full-speed "
      "fit) and B = the wire's rate (the larger fitted B per rate); in brackets for this model: the "
      "share of the step in the all-reduce, T / (%.2f ms / n + T):" % (a0 * 1e6, comp))
print()
sizes = [("2.6 MB (this model)", G), ("26 MB (10x)", 10 * G), ("400 MB (100M params)", 400e6)]
print("| link (B) | n | " + " | ".join(s for s, _ in sizes) + " |")
print("|---|---|" + "---|" * len(sizes))
for rate in rates:
    if rate not in wire: continue
    B = wire[rate]
    for n in (2, 4, 8, 64):
        cells = []
        for i, (_, S) in enumerate(sizes):
            t = T(n, S, B)
            cells.append(ms(t * 1e6) + (" (%.0f%%)" % (100 * t / (comp * 1e-3 / n + t)) if i == 0 else ""))
        print("| %s (%.0f Mbit/s) | %d | %s |" % (names[rate], B * 8e-6, n, " | ".join(cells)))
print()
print("Model check: step = compute/n + T(n, 2.6 MB), with B = the wire's rate / the 1-link bench fit, "
      "against the measured step (2x2: compute/4 assumes 4 cores; this machine has 2):")
for rate in rates:
    f1 = fit(rate)
    if rate not in wire or not f1: continue
    for tag, n in (("2x1", 2), ("2x2", 4), ("2x1-links2", 2)):
        r = tr(rate, tag)
        if not r: continue
        tw, t1 = T(n, G, wire[rate]) * 1e3, T(n, G, f1[1]) * 1e3
        print("  %-10s %-10s compute %.2f + all-reduce %.2f / %.2f = %.2f / %.2f ms predicted, %.2f ms measured "
              "(implied all-reduce %.2f ms)" % (names[rate], tag, comp / n, tw, t1, comp / n + tw, comp / n + t1,
                                                r["step_ms"], r["step_ms"] - comp / n))
print()
print("All-reduce sweep, 2 hosts x 1 rank, 1 link (time per call; busbw in GB/s):")
for rate in rates:
    pts = sorted((r for r in recs if r["kind"] == "allreduce" and r["rate"] == rate and r["tag"] == "sweep"),
                 key=lambda r: r["bytes"])
    t = lambda r: ms(r["time_us"]) if r["time_us"] >= 1e3 else us(r["time_us"])
    print("  %-10s " % names[rate]
          + ", ".join("%d KB %s (%.3f)" % (r["bytes"] >> 10, t(r), r["busbw_GBps"]) for r in pts))
print()
print("mpi_yield_when_idle (full speed; 4 KB all-reduce, 200 calls):")
for label, tag in [("2x1, yield 1", "4k"), ("2x1, yield 0 (busy-poll)", "4k-2x1-spin"),
                   ("2x2, yield 1", "4k-2x2"), ("2x2, yield 0 (busy-poll)", "4k-2x2-spin"),
                   ("4 ranks in 1 host (shared memory), yield 1", "4k-1host-4ranks-yield1"),
                   ("4 ranks in 1 host (shared memory), yield 0", "4k-1host-4ranks-yield0")]:
    r = ar("full", tag, 4096)
    print("  %-45s %s" % (label, us(r["time_us"]) if r else "n/a"))
for label, tag in [("2x2 training, yield 1", "2x2"), ("2x2 training, yield 0", "2x2-spin")]:
    r = tr("full", tag)
    print("  %-45s %s" % (label, "%.1f ms/step, %.0f samples/s" % (r["step_ms"], r["samples_per_s"]) if r else "n/a"))
drops = [r["packets"] for r in recs if r["kind"] == "drops"]
print()
print("packets dropped by the shapers: %s" % (drops[0] if drops else "n/a"))
PY
