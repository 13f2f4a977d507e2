#!/usr/bin/env bash
# Private broker instances for tests: loopback only, free non-default ports,
# everything (data, socket, logs, pid files) inside a caller-owned DIR, stopped
# by pid. Never touches a system-wide service.
#
#   ctl.sh start redis|postgres|rabbitmq DIR [PORT]  prints "PORT PID", waits until ready
#   ctl.sh stop DIR                                  stops what DIR runs, by pid, waits for exit
#   ctl.sh free-port                                 prints a free loopback port
#   ctl.sh rabbitmqctl DIR ARGS...                   rabbitmqctl against DIR's node
#
# Connection details:
#   redis     redis-cli -p PORT                      (no password, database 0, no persistence)
#   postgres  psql -h 127.0.0.1 -p PORT -U postgres postgres
#             user postgres, password postgres, database postgres; trust auth
#             (CTL_PG_AUTH=scram-sha-256 makes TCP logins check the password);
#             unix socket in DIR/postgres
#   rabbitmq  amqp://guest:guest@127.0.0.1:PORT/   vhost "/", no plugins
#             node ygg-test-PORT@localhost with its own epmd (ERL_EPMD_PORT)
#
# PID is the server process itself (redis-server, the postmaster, RabbitMQ's
# beam.smp): `kill -KILL PID` simulates a crash; `stop DIR` then still cleans up
# the rest (RabbitMQ's wrapper script and epmd), and so does `start` in that DIR.
# `stop` then `start KIND DIR PORT` restarts on the same port, reusing DIR's data.
set -euo pipefail

die() {
  echo "ctl.sh: $*" >&2
  exit 1
}

STATE_FILE=ctl.state

# ---------------------------------------------------------------- ports ----

# Reservations keep two concurrent callers from being handed the same port
# between `free-port` and the server binding it; they expire after 10 minutes.
RESERVATIONS="${TMPDIR:-/tmp}/ygg-broker-ports"

port_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  mkdir -p "$RESERVATIONS" 2>/dev/null && chmod 1777 "$RESERVATIONS" 2>/dev/null || true
  find "$RESERVATIONS" -mindepth 1 -maxdepth 1 -mmin +10 -exec rmdir {} + 2>/dev/null || true
  local port
  for _ in $(seq 1 500); do
    # 10000..31999: above the well-known brokers' defaults, below Linux's
    # ephemeral range (32768+), where outgoing connections take their ports.
    port=$((10000 + ((RANDOM << 15 | RANDOM) % 22000)))
    if ! port_listening "$port" && mkdir "$RESERVATIONS/$port" 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# ---------------------------------------------------------- processes ----

alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  # An exited child not yet reaped by its parent is a zombie: it is gone.
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

# wait_gone PID SECONDS: 0 once PID has exited, 1 on timeout.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# terminate PID SIGNAL SECONDS: SIGNAL, then SIGKILL if still there after SECONDS.
terminate() {
  local pid=$1 signal=$2 grace=$3
  alive "$pid" || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$grace"; then
    echo "ctl.sh: pid $pid ignored SIG$signal for ${grace}s, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "pid $pid does not exit"
  fi
}

write_state() { # DIR KIND PORT "PID [PID...]" "SIGNAL [SIGNAL...]"
  printf 'KIND=%s\nPORT=%s\nPIDS="%s"\nSIGNALS="%s"\n' "$2" "$3" "$4" "$5" >"$1/$STATE_FILE"
}

# Prints the last lines of a log and fails.
fail_with_log() {
  local log=$1
  shift
  echo "ctl.sh: $*" >&2
  if [[ -f $log ]]; then
    echo "---- $log (last 30 lines)" >&2
    tail -n 30 "$log" >&2
  fi
  exit 1
}

# -------------------------------------------------------------- redis ----

start_redis() { # DIR PORT
  local dir=$1 port=$2 d=$1/redis pid="" deadline=$((SECONDS + 20))
  command -v redis-server >/dev/null || die "redis-server not installed (apt-get install redis-server redis-tools)"
  mkdir -p "$d"
  rm -f "$d/redis.pid"
  # --save "" and appendonly off: nothing persists; --daemonize detaches it
  # from the caller's stdout so a caller reading our output is not held open.
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes \
    --dir "$d" --save "" --appendonly no \
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" ||
    fail_with_log "$d/redis.log" "redis-server failed to start on port $port"
  while ((SECONDS < deadline)); do
    [[ -z $pid && -s $d/redis.pid ]] && pid=$(<"$d/redis.pid")
    if [[ -n $pid ]]; then
      alive "$pid" || break
      if [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]]; then
        write_state "$dir" redis "$port" "$pid" TERM
        echo "$port $pid"
        return 0
      fi
    fi
    sleep 0.05
  done
  [[ -n $pid ]] && terminate "$pid" KILL 1
  fail_with_log "$d/redis.log" "redis-server on port $port did not become ready"
}

# ----------------------------------------------------------- postgres ----

pg_bin() { # the newest installed server binaries, else whatever PATH has
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x $d/pg_ctl ]] && {
      echo "$d"
      return 0
    }
  done
  command -v pg_ctl >/dev/null && dirname "$(command -v pg_ctl)" && return 0
  die "PostgreSQL server not installed (apt-get install postgresql postgresql-client)"
}

# PostgreSQL refuses to run as root: as root, its files belong to `postgres`.
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# The processes of a cluster (postmaster, backends) have its data dir as
# working directory: that finds backends a killed postmaster left behind.
pg_processes() { # DATA_DIR -> pids
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/cwd" 2>/dev/null) == "$1" ]] && alive "${p#/proc/}" && echo "${p#/proc/}"
  done
  return 0
}

# Waits until no process of the cluster is left (SIGKILL after SECONDS).
pg_wait_gone() { # DATA_DIR SECONDS
  local deadline=$((SECONDS + $2)) pids
  while pids=$(pg_processes "$1") && [[ -n $pids ]]; do
    if ((SECONDS >= deadline)); then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      deadline=$((SECONDS + 5))
    fi
    sleep 0.05
  done
}

start_postgres() { # DIR PORT
  local dir=$1 port=$2 d=$1/postgres bin pid
  bin=$(pg_bin)
  mkdir -p "$d"
  if ((EUID == 0)); then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user to run PostgreSQL as"
    # The postgres user must reach DIR/postgres: let it traverse DIR (not list it).
    chmod a+x "$dir"
    chown postgres: "$d"
    chmod 700 "$d"
    as_pg test -w "$d" || die "user postgres cannot write $d (is a parent of $dir closed to it?)"
  fi
  if [[ ! -f $d/data/PG_VERSION ]]; then
    echo postgres >"$d/pwfile"
    ((EUID == 0)) && chown postgres: "$d/pwfile"
    # -N: no fsync, these clusters are thrown away.
    as_pg "$bin/initdb" -D "$d/data" -U postgres --pwfile="$d/pwfile" -E UTF8 --locale=C \
      --auth-local=trust --auth-host="${CTL_PG_AUTH:-trust}" -N >"$d/initdb.log" 2>&1 ||
      fail_with_log "$d/initdb.log" "initdb failed"
  fi
  # After a crash (kill -KILL PID) the lock files stay; PostgreSQL would take
  # a postmaster that is dead but not yet reaped (a zombie) for a live one.
  local lock_pid
  lock_pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null || true)
  if [[ -n $lock_pid ]] && ! alive "$lock_pid"; then
    pg_wait_gone "$d/data" 10
    rm -f "$d/data/postmaster.pid" "$d"/.s.PGSQL.*
  fi
  # Durability off: nothing here must survive a crash, and it is faster.
  as_pg "$bin/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 30 -s \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $d -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB" \
    start </dev/null >/dev/null 2>&1 ||
    fail_with_log "$d/postgres.log" "postgres failed to start on port $port"
  pid=$(head -n 1 "$d/data/postmaster.pid")
  alive "$pid" || fail_with_log "$d/postgres.log" "postgres exited right after starting"
  # SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected, not waited for.
  write_state "$dir" postgres "$port" "$pid" INT
  echo "$port $pid"
}

# ----------------------------------------------------------- rabbitmq ----

RABBIT_BIN=${CTL_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}

# The environment of DIR's node, for the server and its CLI tools alike: its
# own HOME (Erlang cookie), node name, epmd port and directories, so that it
# never meets a system RabbitMQ or the default epmd of the cluster tests.
rabbit_env() { # DIR -> prints NAME=VALUE lines
  local d=$1/rabbitmq
  # shellcheck disable=SC1091
  source "$d/ports"
  cat <<EOF
HOME=$d/home
RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
RABBITMQ_NODENAME=ygg-test-$AMQP_PORT@localhost
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$AMQP_PORT
RABBITMQ_DIST_PORT=$DIST_PORT
ERL_EPMD_PORT=$EPMD_PORT
ERL_EPMD_ADDRESS=127.0.0.1
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
RABBITMQ_PLUGINS_EXPAND_DIR=$d/plugins-expand
RABBITMQ_FEATURE_FLAGS_FILE=$d/feature_flags
RABBITMQ_MNESIA_BASE=$d/mnesia
RABBITMQ_LOG_BASE=$d/log
RABBITMQ_PID_FILE=$d/rabbit.pid
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
EOF
}

RABBIT_ENV=()
load_rabbit_env() { # DIR -> RABBIT_ENV, arguments for env(1)
  local line
  RABBIT_ENV=()
  while IFS= read -r line; do RABBIT_ENV+=("$line"); done < <(rabbit_env "$1")
}

start_rabbitmq() { # DIR PORT
  local dir=$1 port=$2 d=$1/rabbitmq epmd_pid wrapper_pid beam_pid="" deadline
  [[ -x $RABBIT_BIN/rabbitmq-server ]] || die "rabbitmq-server not installed (apt-get install rabbitmq-server amqp-tools)"
  command -v epmd >/dev/null || die "epmd not found (comes with Erlang)"
  mkdir -p "$d/home" "$d/mnesia" "$d/log"
  printf 'AMQP_PORT=%s\nDIST_PORT=%s\nEPMD_PORT=%s\n' "$port" "$(free_port)" "$(free_port)" >"$d/ports"
  : >"$d/rabbitmq-env.conf" # not /etc/rabbitmq/rabbitmq-env.conf
  echo '[].' >"$d/enabled_plugins"
  # guest/guest is allowed from loopback by default; a small disk must not
  # make the broker block publishers.
  printf 'disk_free_limit.absolute = 1MB\n' >"$d/rabbitmq.conf"
  rm -f "$d/rabbit.pid"

  # Our own epmd in the foreground, so we know its pid and stop it with the node.
  # shellcheck disable=SC1091
  source "$d/ports"
  epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >"$d/log/epmd.log" 2>&1 &
  epmd_pid=$!
  write_state "$dir" rabbitmq "$port" "$epmd_pid" TERM
  deadline=$((SECONDS + 10))
  until port_listening "$EPMD_PORT"; do
    if ! alive "$epmd_pid" || ((SECONDS >= deadline)); then
      stop "$dir"
      fail_with_log "$d/log/epmd.log" "epmd failed on port $EPMD_PORT"
    fi
    sleep 0.05
  done

  # The server script directly: the packaged wrapper switches to the rabbitmq
  # user. env execs it, so $! is the script's own pid.
  load_rabbit_env "$dir"
  env "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-server" </dev/null >"$d/log/server.out" 2>&1 &
  wrapper_pid=$!
  write_state "$dir" rabbitmq "$port" "$wrapper_pid $epmd_pid" "TERM TERM"

  # The AMQP listener opens at the end of the boot; then one ping confirms
  # the node answers its CLI (each CLI call costs a second of CPU).
  deadline=$((SECONDS + 60))
  while :; do
    [[ -z $beam_pid && -s $d/rabbit.pid ]] && beam_pid=$(<"$d/rabbit.pid")
    if ! alive "$wrapper_pid" || ((SECONDS >= deadline)); then
      stop "$dir"
      fail_with_log "$d/log/server.out" "rabbitmq-server did not start on port $port (logs in $d/log)"
    fi
    [[ -n $beam_pid ]] && port_listening "$port" && break
    sleep 0.1
  done
  if ! env "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-diagnostics" -q ping >"$d/log/ping.out" 2>&1; then
    stop "$dir"
    fail_with_log "$d/log/ping.out" "rabbitmq-diagnostics ping failed on port $port"
  fi
  # Stopping the VM (beam.smp) first lets the wrapper script exit by itself.
  write_state "$dir" rabbitmq "$port" "$beam_pid $wrapper_pid $epmd_pid" "TERM TERM TERM"
  echo "$port $beam_pid"
}

# -------------------------------------------------------------- start ----

start() { # KIND DIR [PORT]
  local kind=$1 dir=$2 port=${3:-}
  [[ -d $dir ]] || die "DIR $dir does not exist (create a temp dir first)"
  dir=$(cd "$dir" && pwd)
  if [[ -f $dir/$STATE_FILE ]]; then
    # shellcheck disable=SC1090
    (source "$dir/$STATE_FILE" && ! alive "${PIDS%% *}") ||
      die "$dir already runs an instance (ctl.sh stop $dir first)"
    # Its server was killed: clean up what it left (RabbitMQ's epmd) first.
    stop "$dir"
  fi
  case $kind in
  redis | postgres | rabbitmq) ;;
  *) die "unknown broker '$kind' (redis, postgres or rabbitmq)" ;;
  esac
  if [[ -n $port ]]; then
    [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "bad PORT $port (1..65535)"
    port_listening "$port" && die "port $port is already in use"
    "start_$kind" "$dir" "$port"
  else
    # A port found free can still be taken by someone else before the server
    # binds it: then try another one.
    for _ in 1 2 3; do
      port=$(free_port)
      ("start_$kind" "$dir" "$port") && return 0
      port_listening "$port" || exit 1
      echo "ctl.sh: port $port was taken meanwhile, trying another" >&2
    done
    exit 1
  fi
}

# --------------------------------------------------------------- stop ----

stop() { # DIR
  local dir=$1 i=0 pid signals
  # No state: nothing runs (or a concurrent stop just finished): done.
  # shellcheck disable=SC1090
  source "$dir/$STATE_FILE" 2>/dev/null || return 0
  read -r -a signals <<<"$SIGNALS" # from the state file
  for pid in $PIDS; do
    terminate "$pid" "${signals[$i]:-TERM}" 30
    i=$((i + 1))
  done
  # Backends outlive a postmaster that was killed, for a moment.
  [[ $KIND == postgres ]] && pg_wait_gone "$dir/postgres/data" 10
  rm -f "$dir/$STATE_FILE"
}

usage() {
  sed -n '2,10p' "$0" >&2
  exit 2
}

case ${1:-} in
start)
  [[ $# -ge 3 && $# -le 4 ]] || usage
  start "$2" "$3" "${4:-}"
  ;;
stop)
  [[ $# -eq 2 ]] || usage
  stop "$2"
  ;;
free-port)
  [[ $# -eq 1 ]] || usage
  free_port
  ;;
rabbitmqctl)
  [[ $# -ge 2 && -f $2/rabbitmq/ports ]] || usage
  dir=$(cd "$2" && pwd)
  shift 2
  load_rabbit_env "$dir"
  env "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmqctl" "$@"
  ;;
*) usage ;;
esac
