#!/usr/bin/env bash
# Train across several nodes with Open MPI and a hostfile:
#   launch/run_hostfile.sh HOSTFILE CONFIG [key.path=value ...]
#
# HOSTFILE lists one node per line with the ranks it may hold, e.g.
#   node1 slots=2
#   node2 slots=2
# mpirun starts RANKS_PER_NODE ranks on every listed node (slots must be >= RANKS_PER_NODE), over
# ssh: this node needs password-less ssh to each of them. Nothing is copied: the elbo binary, the
# config, the data and the output directory must exist at the same paths on every node (a shared
# file system, or identical copies), and so must the current directory, where every rank starts.
# Only rank 0 writes the run directory.
#
# Environment: RANKS_PER_NODE (1), ELBO (binary; default <repo>/build/elbo, an absolute path),
# ELBO_IFACE (network interface or CIDR for MPI traffic, e.g. eth0 or 10.0.0.0/24; default: Open
# MPI picks), ELBO_BIND (mpirun --bind-to; default none), MPIRUN_ARGS (extra mpirun flags, split on
# spaces). See docs/MULTI_NODE.md.
set -euo pipefail
ELBO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ELBO=${ELBO:-$ELBO_ROOT/build/elbo}
ranks_per_node=${RANKS_PER_NODE:-1}

die() { echo "run_hostfile.sh: error: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: run_hostfile.sh HOSTFILE CONFIG [key.path=value ...]"
hostfile=$1 config=$2
shift 2
[ -f "$hostfile" ] || die "hostfile not found: $hostfile"
[ -f "$config" ] || die "config not found: $config"
[[ $ranks_per_node =~ ^[1-9][0-9]*$ ]] ||
  die "RANKS_PER_NODE must be a positive integer, got '$ranks_per_node'"
[ -x "$ELBO" ] || die "elbo binary not found or not executable: $ELBO (build it, or set ELBO)"
command -v mpirun >/dev/null || die "mpirun not found on PATH (install openmpi-bin)"

# --wdir: relative config and data paths resolve the same on every node, and mpirun stops if the
# directory is missing on a node instead of silently starting the rank in the home directory.
# --bind-to none: a rank runs several BLAS threads; binding it to one core would stack them there.
# mpi_yield_when_idle: a rank waiting in the all-reduce yields its core instead of spinning, which
# starves the other ranks and the kernel's TCP processing when cores are scarce.
# btl tcp,self,vader: TCP between nodes, shared memory within a node.
# shellcheck disable=SC2054 # the commas in tcp,self,vader are Open MPI's list syntax
# oob_tcp_keepalive_*: mpirun notices a node that is gone (power, cable) in about 25 s rather
# than Open MPI's default of minutes. elbo's watchdog ends the ranks that wait on it after
# distributed.timeout_s, but without keepalives mpirun then waits on the dead node's daemon for
# about 15 minutes of TCP retransmissions (seen with the test hosts of tests/netns).
args=(--hostfile "$hostfile" --map-by "ppr:$ranks_per_node:node" --wdir "$PWD"
      --bind-to "${ELBO_BIND:-none}" --mca mpi_yield_when_idle 1 --mca btl tcp,self,vader
      --mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 5
      --mca oob_tcp_keepalive_probes 3 --mca btl_tcp_links 2)
# btl_tcp_links 2: with one TCP connection per pair of ranks, messages above the eager limit got
# about half the link rate on the test hosts; two connections restore it (the 2.6 MB gradient
# all-reduce at 1 Gbit/s: 40.8 -> 21.9 ms; docs/PERFORMANCE.md, bench/netns_scaling.sh).
# Nodes often have several interfaces (docker0, a management network); Open MPI may try one that
# the other nodes cannot reach and hang at start-up. ELBO_IFACE pins both MPI traffic and the
# launcher's own (oob) connections to one network.
if [ -n "${ELBO_IFACE:-}" ]; then
  args+=(--mca btl_tcp_if_include "$ELBO_IFACE" --mca oob_tcp_if_include "$ELBO_IFACE")
fi
# Forward the environment the ranks need; only variables that are set (mpirun warns on others).
for v in OPENBLAS_NUM_THREADS PATH LD_LIBRARY_PATH; do
  if [ -n "${!v+x}" ]; then args+=(-x "$v"); fi
done
# Open MPI refuses to run as root unless both variables are set (-x carries them to other nodes).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  args+=(-x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
fi
extra=()
read -r -a extra <<<"${MPIRUN_ARGS:-}"

# BLAS threads: elbo gives each rank its node's cores / ranks on the node unless train.threads
# is set, counting the cores of the node it runs on.
cmd=(mpirun "${args[@]}" "${extra[@]}" "$ELBO" train "$config" "$@")
line=$(printf "%q " "${cmd[@]}"); echo "+ ${line% }" >&2
exec "${cmd[@]}"
