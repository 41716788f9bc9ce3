# shellcheck shell=bash disable=SC2034  # netns_* variables are for the scripts that source this
# Test hosts made of Linux network namespaces, for multi-node tests on one machine. Source it:
#
#   . tests/netns/hosts.sh
#   netns_supported || { echo "skip - $netns_reason"; exit 77; }
#   netns_up 2 "$work" || exit 1      # hosts elbo<pid>-h1, -h2; teardown is trapped on EXIT/INT/TERM
#   mpirun "${netns_mpirun[@]}" --map-by ppr:2:node ... "$elbo" train ...
#
# netns_up N WORKDIR [SLOTS] makes N hosts. Host i is the namespace ${netns_prefix}-h$i (name kept
# in netns_ns[i]), with lo up and eth0, a veth whose other end ve<pid>h$i in the root
# namespace (netns_veth[i]) is enslaved to the bridge $netns_bridge. The bridge holds
# $netns_subnet.1 (so the root namespace, where mpirun runs, reaches every host) and host i holds
# $netns_subnet.(10+i) (netns_ip[i]). The subnet is 10.213.X.0/24 with X = $$ % 200 + 20, moved on
# while another interface already uses it. It writes:
#   WORKDIR/hostfile    "<ip> slots=SLOTS" per host (SLOTS defaults to 2)
#   WORKDIR/rsh_agent   Open MPI's plm_rsh_agent: `rsh_agent [-opts] HOST COMMAND...` runs
#                       COMMAND with /bin/sh -c in HOST's namespace (as ssh would), in a UTS
#                       namespace of its own whose hostname is the namespace's name, so that the
#                       Open MPI daemons of different hosts do not share a node name.
# and sets netns_mpirun: the mpirun flags that launch across the hosts (see the comments there).
#
# netns_down kills every process left in the namespaces, deletes them, their veths and the bridge;
# it is idempotent and runs on EXIT, INT and TERM once netns_up ran. A test that has its own
# processes to stop first (mpirun runs in the root namespace) defines netns_before_down.
# netns_cut I / netns_kill I: cut host I's link, or kill -9 every process in its namespace.
# Every loop is bounded in count and time. Needs root, iproute2 and the veth and bridge drivers.

netns_id=$$
netns_prefix=elbo$netns_id
netns_bridge=br-elbo$netns_id   # <= 14 characters: pids have at most 7 digits
netns_subnet="" netns_cidr="" netns_workdir="" netns_reason=""
netns_ns=() netns_veth=() netns_ip=() netns_mpirun=()
netns_made=0   # what exists, for netns_down: 1 bridge, then one namespace after another

netns_supported() {  # returns 0 when namespaces can be made; else sets netns_reason
  if [ "$(id -u)" -ne 0 ]; then netns_reason="not root"; return 1; fi
  if ! command -v ip >/dev/null; then netns_reason="no ip (iproute2)"; return 1; fi
  local probe=${netns_prefix}-probe
  if ! ip netns add "$probe" 2>/dev/null; then
    netns_reason="ip netns add fails"; return 1
  fi
  ip netns del "$probe" 2>/dev/null
  if ! ip link add "pb$netns_id" type bridge 2>/dev/null; then
    netns_reason="cannot make a bridge"; return 1
  fi
  ip link del "pb$netns_id" 2>/dev/null
  return 0
}

_netns_subnet() {  # picks 10.213.X with X = pid % 200 + 20, the first one no interface uses
  local x=$((netns_id % 200 + 20)) i used
  used=$(ip -4 -o addr show 2>/dev/null)
  for ((i = 0; i < 200; i++)); do
    if ! grep -q " 10\.213\.$x\." <<<"$used"; then netns_subnet=10.213.$x; return 0; fi
    x=$(( (x - 20 + 1) % 200 + 20 ))
  done
  return 1
}

netns_up() {  # netns_up N WORKDIR [SLOTS]
  local n=$1 slots=${3:-2} i ns veth
  netns_workdir=$(realpath "$2") || return 1
  [[ $n =~ ^[1-9][0-9]?$ ]] || { echo "netns_up: bad host count '$n'" >&2; return 1; }
  trap '_netns_trap EXIT' EXIT
  trap '_netns_trap INT; exit 130' INT
  trap '_netns_trap TERM; exit 143' TERM
  _netns_subnet || { echo "netns_up: no free subnet 10.213.20-219.0/24" >&2; return 1; }
  netns_cidr=$netns_subnet.0/24
  ip link add "$netns_bridge" type bridge || return 1
  netns_made=1
  ip addr add "$netns_subnet.1/24" dev "$netns_bridge" && ip link set "$netns_bridge" up || return 1
  : >"$netns_workdir/hostfile"
  for ((i = 1; i <= n; i++)); do
    ns=$netns_prefix-h$i veth=ve${netns_id}h$i
    netns_ns[i]=$ns netns_veth[i]=$veth netns_ip[i]=$netns_subnet.$((10 + i))
    ip netns add "$ns" || return 1
    netns_made=$((i + 1))
    # The host end is created inside the namespace as eth0: no name clash in the root namespace.
    ip link add "$veth" type veth peer name eth0 netns "$ns" || return 1
    ip link set "$veth" master "$netns_bridge" && ip link set "$veth" up || return 1
    ip -n "$ns" link set lo up || return 1
    ip -n "$ns" addr add "${netns_ip[i]}/24" dev eth0 && ip -n "$ns" link set eth0 up || return 1
    echo "${netns_ip[i]} slots=$slots" >>"$netns_workdir/hostfile"
  done
  _netns_agent >"$netns_workdir/rsh_agent" && chmod 755 "$netns_workdir/rsh_agent" || return 1
  # mpirun runs in the root namespace and starts one orted per host through the agent.
  #  plm_rsh_no_tree_spawn: every orted is started by mpirun itself, not by another orted.
  #  btl tcp,self,vader: TCP between hosts, shared memory between the ranks of one host.
  #  btl_tcp_if_include / oob_tcp_if_include: MPI and launcher traffic stay on the test subnet
  #  (each host has only eth0 and lo; the root namespace reaches them through the bridge).
  #  mpi_yield_when_idle: waiting ranks do not spin (2 cores for 4 ranks).
  #  oob_tcp_keepalive_*: mpirun notices a host whose link is gone after about 2 + 3 x 1 s. Without
  #  them (300 + 9 x 20 s), a rank that ends first (elbo's distributed.timeout_s) makes mpirun send
  #  the kill order to the lost host's daemon, and mpirun then waits on TCP retransmissions (about
  #  15 minutes) instead of exiting. NETNS_KEEPALIVE=0 leaves them out (to see that).
  # shellcheck disable=SC2054 # the commas in tcp,self,vader are Open MPI's list syntax
  netns_mpirun=(--hostfile "$netns_workdir/hostfile" --mca plm_rsh_agent "$netns_workdir/rsh_agent"
                --mca plm_rsh_no_tree_spawn 1 --mca btl tcp,self,vader
                --mca btl_tcp_if_include "$netns_cidr" --mca oob_tcp_if_include "$netns_cidr"
                --mca mpi_yield_when_idle 1 --bind-to none
                -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
  # The sanitizers' settings (sanitized builds) reach the ranks on every host.
  local v
  for v in ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS; do
    if [ -n "${!v:-}" ]; then netns_mpirun+=(-x "$v"); fi
  done
  if [ "${NETNS_KEEPALIVE:-1}" != 0 ]; then
    netns_mpirun+=(--mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1
                   --mca oob_tcp_keepalive_probes 3)
  fi
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  _netns_wait_link || return 1
}

_netns_wait_link() {  # waits (max 10 s) until every host reaches the bridge address over TCP
  local i t
  for ((i = 1; i < netns_made; i++)); do
    for ((t = 0; t < 50; t++)); do
      # The bridge port leaves the listening/learning states quickly (no STP by default); a TCP
      # connect to a closed port of the bridge address answers "refused" once the path works.
      if ip netns exec "${netns_ns[i]}" timeout 1 bash -c \
          "exec 3<>/dev/tcp/$netns_subnet.1/9" 2>&1 | grep -q -i refused; then
        break
      fi
      sleep 0.2
    done
    [ "$t" -lt 50 ] || { echo "netns_up: host $i cannot reach $netns_subnet.1" >&2; return 1; }
  done
}

_netns_agent() {  # the plm_rsh_agent script, with this run's hosts in it
  local i
  cat <<'EOF'
#!/bin/sh
# plm_rsh_agent for elbo's namespace test hosts (tests/netns/hosts.sh): called like ssh,
#   rsh_agent [-options] HOST COMMAND...
# it runs COMMAND (the words joined with spaces, as ssh does) with /bin/sh -c in HOST's network
# namespace, in a UTS namespace whose hostname is the namespace's name.
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;   # ssh options that take an argument
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "rsh_agent: usage: rsh_agent [-options] HOST COMMAND..." >&2; exit 255; }
host=$1; shift
case $host in
EOF
  for ((i = 1; i < netns_made; i++)); do
    printf '  %s|%s|h%d) ns=%s ;;\n' "${netns_ip[i]}" "${netns_ns[i]}" "$i" "${netns_ns[i]}"
  done
  cat <<'EOF'
  *) echo "rsh_agent: unknown host '$host'" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$ns" "$*"
EOF
}

netns_pids() {  # netns_pids I: the processes in host I's namespace
  ip netns pids "${netns_ns[$1]}" 2>/dev/null
}

netns_kill() {  # netns_kill I: kill -9 every process in host I's namespace (bounded: 20 rounds)
  local r p left
  for ((r = 0; r < 20; r++)); do
    left=$(netns_pids "$1")
    [ -n "$left" ] || return 0
    for p in $left; do kill -9 "$p" 2>/dev/null; done
    sleep 0.1
  done
  return 1
}

netns_cut() {  # netns_cut I: host I's link goes down (its root end: no packets in or out)
  ip link set "${netns_veth[$1]}" down
}

_netns_trap() {
  local what=$1
  [ "$what" = EXIT ] || trap - EXIT   # INT/TERM exit right after; tear down once
  netns_down
}

netns_down() {  # idempotent: kills what runs in the hosts, deletes namespaces, veths and bridge
  [ "$netns_made" -gt 0 ] || return 0
  if declare -F netns_before_down >/dev/null; then netns_before_down || true; fi
  local i
  for ((i = 1; i < netns_made; i++)); do netns_kill "$i"; done
  for ((i = 1; i < netns_made; i++)); do
    ip netns del "${netns_ns[i]}" 2>/dev/null
    ip link del "${netns_veth[i]}" 2>/dev/null   # gone with its peer already, unless held
  done
  ip link del "$netns_bridge" 2>/dev/null
  netns_made=0
  return 0
}
