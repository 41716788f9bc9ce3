#!/usr/bin/env bash
# Train with NP MPI ranks on this machine:
#   launch/run_local.sh NP CONFIG [key.path=value ...]
# Environment: ELBO (the binary; default <repo>/build/elbo), ELBO_BIND (mpirun --bind-to; default
# none), MPIRUN_ARGS (extra mpirun flags, split on spaces). See docs/MULTI_NODE.md.
set -euo pipefail
ELBO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ELBO=${ELBO:-$ELBO_ROOT/build/elbo}

die() { echo "run_local.sh: error: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: run_local.sh NP CONFIG [key.path=value ...]"
np=$1 config=$2
shift 2
[[ $np =~ ^[1-9][0-9]*$ ]] || die "NP must be a positive integer, got '$np'"
[ -f "$config" ] || die "config not found: $config"
[ -x "$ELBO" ] || die "elbo binary not found or not executable: $ELBO (build it, or set ELBO)"
command -v mpirun >/dev/null || die "mpirun not found on PATH (install openmpi-bin)"

cores=$(nproc)
# --bind-to none: each rank runs several BLAS threads, and Open MPI's default binding (one core
# per rank) would pile them all onto that core. mpi_yield_when_idle: a rank waiting in the
# all-reduce yields its core instead of spinning, which matters once ranks share cores.
args=(-np "$np" --bind-to "${ELBO_BIND:-none}" --mca mpi_yield_when_idle 1)
# Open MPI refuses more ranks than cores unless told.
if [ "$np" -gt "$cores" ]; then args+=(--oversubscribe); fi
# Open MPI refuses to run as root unless both variables are set.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
extra=()
read -r -a extra <<<"${MPIRUN_ARGS:-}"

# BLAS threads: elbo gives each rank its node's cores / ranks on the node unless train.threads
# is set, counting the cores of the node it runs on.
cmd=(mpirun "${args[@]}" "${extra[@]}" "$ELBO" train "$config" "$@")
line=$(printf "%q " "${cmd[@]}"); echo "+ ${line% }" >&2
exec "${cmd[@]}"
