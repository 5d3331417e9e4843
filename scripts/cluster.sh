#!/usr/bin/env bash
# A separate 3-node RabbitMQ cluster for tests, next to (and independent of) the default node
# rabbit@localhost on 5672:
#
#   scripts/cluster.sh start    start / repair the cluster, wait until 3 nodes run clustered
#   scripts/cluster.sh stop     stop the three cluster nodes (only them)
#   scripts/cluster.sh status   print the state of each node (exit 3 unless all run clustered)
#   scripts/cluster.sh urls     print the AMQP URLs, comma-separated
#   scripts/cluster.sh restart-node N [DOWN]
#                               restart node N (1-3) whole: shut its Erlang VM down, wait DOWN
#                               seconds (default 0), boot it again with its data, wait until
#                               the other nodes see it running (a rolling restart's step)
#
# Nodes aqueue-c1..c3@localhost, AMQP on 127.0.0.1:5681-5683, distribution on 25681-25683,
# data and logs under $AQUEUE_CLUSTER_DIR (default /tmp/aqueue-cluster). A cold start (no node
# running) wipes the old data, so every `stop` + `start` gives a fresh cluster.
set -euo pipefail

BASE=${AQUEUE_CLUSTER_DIR:-/tmp/aqueue-cluster}
TIMEOUT=${AQUEUE_CLUSTER_TIMEOUT:-120}
HOST=localhost # the short name the default node uses too; resolves to 127.0.0.1 here
NAMES=(aqueue-c1 aqueue-c2 aqueue-c3)
PORTS=(5681 5682 5683)
DIST_PORTS=(25681 25682 25683)
SEED="${NAMES[0]}@$HOST"
RMQ_USER=rabbitmq

log() { echo "cluster.sh: $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

node_of() { echo "${NAMES[$1]}@$HOST"; }
node_dir() { echo "$BASE/${NAMES[$1]}"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

urls() {
  local out=() p
  for p in "${PORTS[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$p/"); done
  (IFS=,; echo "${out[*]}")
}

# --- installation and environment -------------------------------------------------------------

ensure_installed() {
  if command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "rabbitmq-server is not installed (installing it needs root)"
  log "installing rabbitmq-server ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
}

find_bin_dir() {
  # The Debian /usr/sbin/rabbitmq-* are wrappers that su to rabbitmq and, for rabbitmq-server,
  # redirect output to /var/log/rabbitmq/startup_log (the default node's file): use the real
  # scripts they wrap.
  local d
  for d in "${RABBITMQ_BIN_DIR:-}" /usr/lib/rabbitmq/bin; do
    if [ -n "$d" ] && [ -x "$d/rabbitmq-server" ] && [ -x "$d/rabbitmqctl" ]; then
      echo "$d"
      return 0
    fi
  done
  d=$(dirname "$(readlink -f "$(command -v rabbitmq-server)")")
  [ -x "$d/rabbitmqctl" ] || die "cannot find the rabbitmq-server / rabbitmqctl scripts"
  echo "$d"
}

setup_env() {
  ensure_installed
  BIN=$(find_bin_dir)
  id -u "$RMQ_USER" >/dev/null 2>&1 || die "no '$RMQ_USER' user (is rabbitmq-server installed?)"
  RMQ_HOME=$(getent passwd "$RMQ_USER" | cut -d: -f6)
  if [ "$(id -u)" != 0 ] && [ "$(id -un)" != "$RMQ_USER" ]; then
    die "run as root or as $RMQ_USER"
  fi
}

# Run a command as the rabbitmq user with its HOME, so that the nodes, our rabbitmqctl and the
# Debian rabbitmqctl wrapper root uses (it su's to rabbitmq) all read the same Erlang cookie,
# $RMQ_HOME/.erlang.cookie. Root's own ~/.erlang.cookie is never involved.
as_rmq() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$BASE" && runuser -u "$RMQ_USER" -- env HOME="$RMQ_HOME" "$@")
  else
    (cd "$BASE" && env HOME="$RMQ_HOME" "$@")
  fi
}

# rabbitmqctl against one node; `timeout` because a CLI call to a wedged node can hang, and
# within `start` no call may outlast its deadline by much.
DEADLINE=
ctl() {
  local node=$1 t=90
  shift
  if [ -n "$DEADLINE" ]; then
    t=$((DEADLINE - SECONDS))
    [ "$t" -le 90 ] || t=90
    [ "$t" -ge 5 ] || t=5
  fi
  as_rmq timeout "$t" "$BIN/rabbitmqctl" -n "$node" "$@"
}

ensure_cookie() {
  # Three fresh nodes starting at once would each create a different cookie if none exists yet
  # (and then could not cluster): create the one the default node uses too, ahead of them.
  local cookie="$RMQ_HOME/.erlang.cookie"
  as_rmq test -s "$cookie" && return 0
  log "creating $cookie"
  as_rmq sh -c "umask 077 && head -c 4096 /dev/urandom | tr -dc A-Z | head -c 20 > '$cookie' \
    && chmod 400 '$cookie'"
}

prepare_dirs() {
  if [ "$(id -u)" = 0 ]; then
    install -d -m 755 -o "$RMQ_USER" -g "$RMQ_USER" "$BASE"
  else
    mkdir -p "$BASE"
  fi
  # No plugins: the management (15672) and prometheus (15692) listeners of the default node's
  # plugins would clash across nodes on one host; tests talk AMQP and rabbitmqctl only.
  as_rmq sh -c "echo '[].' > '$BASE/enabled_plugins'"
  # Our own env file, or rabbitmq-env would source /etc/rabbitmq/rabbitmq-env.conf and its
  # NODENAME=rabbit@localhost.
  as_rmq sh -c "printf '%s\n' 'ERL_EPMD_ADDRESS=127.0.0.1' > '$BASE/rabbitmq-env.conf'"
}

write_node_config() {
  local i=$1 dir
  dir=$(node_dir "$i")
  as_rmq mkdir -p "$dir/mnesia" "$dir/log"
  # Our own config, not /etc/rabbitmq/rabbitmq.conf (it binds 5672). Table loading gives up
  # after 3 x 10 s instead of 10 x 30 s, so a node with stale cluster data fails fast and gets
  # wiped instead of blocking `start` for minutes.
  as_rmq sh -c "cat > '$dir/rabbitmq.conf'" <<EOF
listeners.tcp.local = 127.0.0.1:${PORTS[$i]}
loopback_users.guest = true
log.console = false
log.file.level = info
mnesia_table_loading_retry_timeout = 10000
mnesia_table_loading_retry_limit = 3
EOF
}

# --- node state -------------------------------------------------------------------------------

# Prints the pid in PIDFILE if that process is alive and is one of ours for NODE (its command
# line or environment has RABBITMQ_NODENAME=NODE), so a stale pid file whose pid was reused
# never gets an unrelated process killed.
our_pid() {
  local pidfile=$1 node=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cat "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' \
    | grep -qx "RABBITMQ_NODENAME=$node" || return 1
  echo "$pid"
}

node_pids_alive() {
  local dir
  dir=$(node_dir "$1")
  our_pid "$dir/launcher.pid" "$(node_of "$1")" >/dev/null \
    || our_pid "$dir/rabbitmq.pid" "$(node_of "$1")" >/dev/null
}

# down | stopped (Erlang node up, RabbitMQ app not running) | running
node_state() {
  local node
  node=$(node_of "$1")
  if ! ctl "$node" ping -q >/dev/null 2>&1; then
    echo down
  elif as_rmq timeout 60 "$BIN/rabbitmq-diagnostics" -n "$node" -q check_running >/dev/null 2>&1
  then
    echo running
  else
    echo stopped
  fi
}

running_nodes() {
  # Nodes with the RabbitMQ app running, as seen by $1 (default: the seed): "a@h b@h ..."
  # (empty when that node's app does not run).
  local json
  json=$(ctl "${1:-$SEED}" cluster_status --formatter json 2>/dev/null) || return 0
  echo "$json" | grep -o '"running_nodes":\[[^]]*\]' | grep -o '"[^"]*@[^"]*"' | tr -d '"' \
    | paste -sd ' ' || true
}

cluster_ok() {
  local running i
  running=" $(running_nodes) "
  for i in 0 1 2; do
    [[ $running == *" $(node_of "$i") "* ]] || return 1
    port_open "${PORTS[$i]}" || return 1
  done
}

show_logs() {
  local i f
  for i in 0 1 2; do
    for f in "$(node_dir "$i")/startup.log" "$(node_dir "$i")/log/$(node_of "$i").log"; do
      [ -s "$f" ] || continue
      echo "----- tail of $f" >&2
      tail -n 25 "$f" >&2 || true
    done
  done
}

fail() {
  log "ERROR: $*"
  show_logs
  exit 1
}

# --- start / stop one node --------------------------------------------------------------------

check_ports_free() {
  local p
  for p in "${PORTS[$1]}" "${DIST_PORTS[$1]}"; do
    if port_open "$p"; then
      die "port $p is taken by another process; cannot start $(node_of "$1") ($(ss -ltnpH \
        "sport = :$p" 2>/dev/null | grep -o 'users:.*' || true))"
    fi
  done
}

launch_node() {
  local i=$1 node dir
  node=$(node_of "$i")
  dir=$(node_dir "$i")
  check_ports_free "$i"
  write_node_config "$i"
  log "starting $node (AMQP ${PORTS[$i]}, dist ${DIST_PORTS[$i]})"
  # Backgrounded (not -detached) so boot errors land in startup.log; setsid so that a Ctrl-C
  # on the caller does not reach the node; all fds redirected so a caller capturing our output
  # (pytest's subprocess.run) does not wait for the node to exit.
  (
    cd "$BASE"
    local -a run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u "$RMQ_USER" --)
    exec setsid "${run[@]}" env \
      HOME="$RMQ_HOME" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_NODENAME="$node" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="${PORTS[$i]}" \
      RABBITMQ_DIST_PORT="${DIST_PORTS[$i]}" \
      RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" \
      RABBITMQ_MNESIA_DIR="$dir/mnesia/$node" \
      RABBITMQ_PLUGINS_EXPAND_DIR="$dir/mnesia/$node-plugins-expand" \
      RABBITMQ_FEATURE_FLAGS_FILE="$dir/mnesia/$node-feature_flags" \
      RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      "$BIN/rabbitmq-server"
  ) </dev/null >"$dir/startup.log" 2>&1 &
  echo $! >"$dir/launcher.pid"
}

# Wait until the node's app runs and its AMQP port accepts connections. Returns 1 early when the
# node process has exited (boot failure). Polls the port first: each rabbitmqctl call starts an
# Erlang VM (~0.5 s of CPU), which would slow down the booting nodes on a small machine.
wait_running() {
  local i=$1 deadline=$2 node dir
  node=$(node_of "$i")
  dir=$(node_dir "$i")
  while [ "$SECONDS" -lt "$deadline" ]; do
    if port_open "${PORTS[$i]}" && ctl "$node" await_startup --timeout 10 >/dev/null 2>&1; then
      return 0
    fi
    if ! node_pids_alive "$i" && ! ctl "$node" ping -q >/dev/null 2>&1; then
      log "$node exited while booting"
      return 1
    fi
    sleep 0.3
  done
  log "$node did not start in time"
  return 1
}

# stop_node I [down]: "down" when we know the node does not answer (skips the ping).
stop_node() {
  local i=$1 known=${2:-} node dir pid
  node=$(node_of "$i")
  dir=$(node_dir "$i")
  if [ "$known" != down ] && ctl "$node" ping -q >/dev/null 2>&1; then
    # shutdown waits until the OS process has exited.
    ctl "$node" shutdown >/dev/null 2>&1 || true
  fi
  # A node that does not answer (half-booted, wedged): kill it by its own pid files only.
  for pid in "$dir/rabbitmq.pid" "$dir/launcher.pid"; do
    pid=$(our_pid "$pid" "$node") && kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 40); do
    node_pids_alive "$i" || break
    sleep 0.25
  done
  pid=$(our_pid "$dir/rabbitmq.pid" "$node") && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/rabbitmq.pid" "$dir/launcher.pid"
}

wipe_node() {
  local dir
  dir=$(node_dir "$1")
  rm -f "$dir/startup.log"
  as_rmq rm -rf "$dir/mnesia"
  as_rmq sh -c "rm -f '$dir/log/'*"
}

# Make node i (app stopped) a member of the seed's cluster. When the join fails (stale
# membership on either side), reset the node, make the seed forget it and retry.
join_node() {
  local i=$1 node out
  node=$(node_of "$i")
  log "joining $node to $SEED"
  if ! out=$(ctl "$node" join_cluster "$SEED" 2>&1); then
    log "join of $node failed ($(echo "$out" | grep -m1 -i error || true)); resetting and retrying"
    ctl "$node" reset >/dev/null 2>&1 || ctl "$node" force_reset >/dev/null
    ctl "$SEED" forget_cluster_node "$node" >/dev/null 2>&1 || true
    if ! out=$(ctl "$node" join_cluster "$SEED" 2>&1); then
      echo "$out" >&2
      return 1
    fi
  fi
}

# Run `f I` for each node index given, in parallel; fails if any fails. (A bare `wait` would
# also wait for the node processes launched from this shell.)
each_parallel() {
  local f=$1 i rc=0
  shift
  local -a pids=()
  for i in "$@"; do
    "$f" "$i" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  return "$rc"
}

probe_state() { node_state "$1" >"$STATE_DIR/$1"; }
stop_app() { ctl "$(node_of "$1")" stop_app >/dev/null; }
start_app_noting() {
  log "start_app on $(node_of "$1")"
  start_app "$1" 2>/dev/null || touch "$STATE_DIR/failed$1"
}
start_app() { ctl "$(node_of "$1")" start_app >/dev/null; }

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
  local started=$SECONDS deadline=$((SECONDS + TIMEOUT)) i running
  local -a state=()
  setup_env
  prepare_dirs
  if cluster_ok; then
    log "cluster already running: $(urls)"
    return 0
  fi
  ensure_cookie

  STATE_DIR=$(mktemp -d)
  trap 'rm -rf "$STATE_DIR"' EXIT
  each_parallel probe_state 0 1 2
  for i in 0 1 2; do state[i]=$(cat "$STATE_DIR/$i"); done
  if [ "${state[*]}" = "down down down" ]; then
    # Cold start: stop leftovers that no longer answer and begin from empty data, so that no
    # stale cluster membership can get in the way.
    for i in 0 1 2; do
      stop_node "$i" down
      wipe_node "$i"
    done
  fi

  # Boot the nodes that are down (a node that was clustered rejoins with its data), and start
  # the app where only the Erlang node runs (after a stop_app). All in parallel: a clustered
  # node's boot / start_app blocks until it can sync with the peers booting at the same time.
  DEADLINE=$deadline
  local -a stopped=()
  for i in 0 1 2; do
    [ "${state[i]}" != down ] || check_ports_free "$i"
  done
  for i in 0 1 2; do
    case ${state[i]} in
      down) launch_node "$i" ;;
      stopped) stopped+=("$i") ;;
    esac
  done
  if [ "${#stopped[@]}" -gt 0 ]; then
    each_parallel start_app_noting "${stopped[@]}" || true
  fi
  for i in 0 1 2; do
    [ "${state[i]}" = running ] && continue
    if [ -e "$STATE_DIR/failed$i" ] || ! wait_running "$i" "$deadline"; then
      [ "$SECONDS" -lt "$deadline" ] || fail "$(node_of "$i") did not start within ${TIMEOUT}s"
      # Usually stale data (cluster peers that no longer know it): start it from scratch.
      log "$(node_of "$i") failed to boot; wiping its data and starting it fresh"
      stop_node "$i"
      wipe_node "$i"
      [ "$i" = 0 ] || ctl "$SEED" forget_cluster_node "$(node_of "$i")" >/dev/null 2>&1 || true
      launch_node "$i"
      wait_running "$i" "$deadline" || fail "$(node_of "$i") does not start"
    fi
  done

  # c2, c3: stop_app, join_cluster c1 (one at a time: both change c1's member list), start_app.
  running=" $(running_nodes) "
  [[ $running == *" $SEED "* ]] || fail "$SEED is not running"
  local -a joining=()
  for i in 1 2; do
    [[ $running == *" $(node_of "$i") "* ]] || joining+=("$i")
  done
  if [ "${#joining[@]}" -gt 0 ]; then
    each_parallel stop_app "${joining[@]}" || fail "stop_app failed"
    for i in "${joining[@]}"; do
      join_node "$i" || fail "$(node_of "$i") could not join $SEED"
    done
    each_parallel start_app "${joining[@]}" || fail "start_app failed after joining"
    for i in "${joining[@]}"; do
      wait_running "$i" "$deadline" || fail "$(node_of "$i") does not run after joining"
    done
  fi

  while ! cluster_ok; do
    [ "$SECONDS" -lt "$deadline" ] || fail "cluster not formed after ${TIMEOUT}s: $(running_nodes)"
    sleep 0.5
  done
  log "cluster running ($((SECONDS - started))s): $(urls)"
}

cmd_stop() {
  local i
  setup_env
  [ -d "$BASE" ] || return 0
  # In parallel: each shutdown waits for its node's process to exit.
  each_parallel stop_node 0 1 2
  for i in 0 1 2; do
    ! port_open "${PORTS[$i]}" || die "$(node_of "$i") still listens on ${PORTS[$i]}"
  done
  log "cluster stopped"
}

# restart-node N [DOWN]: the whole node, not only its app (stop_app / start_app keep the
# Erlang VM, its distribution links and its memory). The node keeps its data and membership,
# so it rejoins by itself when it boots; the other two keep the cluster (and every quorum
# queue's majority) meanwhile. Refuses when the cluster is not fully running: restarting a
# node of a degraded cluster could take a quorum queue's majority away.
cmd_restart_node() {
  local n=${1:-} down=${2:-0} i node deadline other
  [[ $n =~ ^[1-3]$ ]] || die "restart-node: N must be 1, 2 or 3"
  [[ $down =~ ^[0-9]+([.][0-9]+)?$ ]] || die "restart-node: DOWN must be a number of seconds"
  setup_env
  prepare_dirs
  i=$((n - 1))
  node=$(node_of "$i")
  other=$(node_of $(((i + 1) % 3)))
  cluster_ok || die "restart-node: the cluster is not fully running ($(running_nodes))"
  deadline=$((SECONDS + TIMEOUT))
  DEADLINE=$deadline
  # Only once every quorum queue keeps a majority without this node (a replica elsewhere
  # may still be catching up after the previous step).
  until as_rmq timeout 60 "$BIN/rabbitmq-queues" -n "$node" -q check_if_node_is_quorum_critical \
    >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "restart-node: $node stays quorum critical"
    sleep 1
  done
  log "stopping $node"
  stop_node "$i"
  ! port_open "${PORTS[$i]}" || die "$node still listens on ${PORTS[$i]}"
  sleep "$down"
  launch_node "$i"
  wait_running "$i" "$deadline" || fail "$node did not boot again"
  while [[ " $(running_nodes "$other") " != *" $node "* ]]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$node did not rejoin within ${TIMEOUT}s"
    sleep 0.5
  done
  log "$node restarted and back in the cluster"
}

cmd_status() {
  local i st running="" seen_by="" rc=0
  setup_env
  [ -d "$BASE" ] || prepare_dirs
  # The running nodes as the first node with its app running sees them.
  for i in 0 1 2; do
    running=$(running_nodes "$(node_of "$i")")
    if [ -n "$running" ]; then
      seen_by=$(node_of "$i")
      break
    fi
  done
  local list=$running
  running=" $running "
  for i in 0 1 2; do
    st=$(node_state "$i")
    local amqp=closed clustered=no
    port_open "${PORTS[$i]}" && amqp=open
    [[ $running == *" $(node_of "$i") "* ]] && clustered=yes
    printf '%-22s %-8s amqp 127.0.0.1:%s %-6s in the cluster: %s\n' \
      "$(node_of "$i")" "$st" "${PORTS[$i]}" "$amqp" "$clustered"
    [ "$st" = running ] && [ "$clustered" = yes ] || rc=3
  done
  echo "running nodes (seen by ${seen_by:-no running node}): $list"
  return "$rc"
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  urls) urls ;;
  restart-node)
    shift
    cmd_restart_node "$@"
    ;;
  *)
    echo "usage: $0 start|stop|status|urls|restart-node N [DOWN]" >&2
    exit 2
    ;;
esac
