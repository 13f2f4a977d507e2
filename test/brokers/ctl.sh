#!/usr/bin/env bash
# Private broker instances for tests: loopback only, free non-default ports,
# everything (data, socket, logs, pid files) inside a caller-owned DIR, stopped
# by pid. Never touches a system-wide service.
#
#   ctl.sh start redis|postgres|rabbitmq DIR [PORT]  prints "PORT PID", waits until ready
#   ctl.sh stop DIR                                  stops what DIR runs, by pid, waits for exit
#   ctl.sh free-port                                 prints a free loopback port
#   ctl.sh rabbitmqctl DIR ARGS...                   rabbitmqctl against DIR's node
#   ctl.sh certs CERTS_DIR                           test CA and certs (certs.sh)
#
# TLS mode (for `start`), from the environment:
#   CTL_TLS=CERTS_DIR          the server speaks TLS only, on PORT, with certs
#                              made by `ctl.sh certs CERTS_DIR`
#   CTL_TLS_CERT=NAME          the server's cert: server (default; trusted,
#                              localhost/127.0.0.1), untrusted (another CA),
#                              wrong-name (trusted CA, other.example only)
#   CTL_TLS_CLIENT_CERT=required  clients must show a cert signed by the CA
#                              (client.pem/client.key); default: none asked
# Nothing in DIR remembers the mode: a restart is in TLS mode when these are
# set again (a restart with another CTL_TLS_CERT swaps the server's cert).
#   redis     redis-cli --tls --cacert CERTS_DIR/ca.pem -p PORT   (no plaintext port)
#   postgres  psql "host=localhost hostaddr=127.0.0.1 port=PORT user=postgres
#             dbname=postgres sslmode=verify-full sslrootcert=CERTS_DIR/ca.pem";
#             pg_hba.conf has only hostssl lines for TCP (+ clientcert=verify-ca
#             when required); the unix socket stays plaintext (trust)
#   rabbitmq  amqps://guest:guest@localhost:PORT/  an ssl listener only
#             (listeners.tcp = none); verify_peer + fail_if_no_peer_cert
#             when required, else verify_none
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

# ---------------------------------------------------------------- tls ----

TLS_DIR=""    # the certs dir in TLS mode, else empty
TLS_CERT=""   # server | untrusted | wrong-name
TLS_CLIENT="" # yes when client certs are required, else no

tls_setup() { # from CTL_TLS, CTL_TLS_CERT, CTL_TLS_CLIENT_CERT
  [[ -n ${CTL_TLS:-} ]] || return 0
  [[ -d $CTL_TLS ]] || die "CTL_TLS=$CTL_TLS is not a directory (make one with ctl.sh certs DIR)"
  TLS_DIR=$(cd "$CTL_TLS" && pwd)
  TLS_CERT=${CTL_TLS_CERT:-server}
  case $TLS_CERT in
  server | untrusted | wrong-name) ;;
  *) die "CTL_TLS_CERT=$TLS_CERT: server, untrusted or wrong-name" ;;
  esac
  case ${CTL_TLS_CLIENT_CERT:-} in
  "" | no) TLS_CLIENT=no ;;
  required) TLS_CLIENT=yes ;;
  *) die "CTL_TLS_CLIENT_CERT=$CTL_TLS_CLIENT_CERT: required or empty" ;;
  esac
  local f
  for f in ca.pem "$TLS_CERT.pem" "$TLS_CERT.key" client.pem client.key; do
    [[ -r $TLS_DIR/$f ]] || die "no $TLS_DIR/$f (make the certs with ctl.sh certs $TLS_DIR)"
  done
}

# -------------------------------------------------------------- redis ----

start_redis() { # DIR PORT
  local dir=$1 port=$2 d=$1/redis pid="" deadline=$((SECONDS + 20))
  command -v redis-server >/dev/null || die "redis-server not installed (apt-get install redis-server redis-tools)"
  mkdir -p "$d"
  rm -f "$d/redis.pid"
  # --save "" and appendonly off: nothing persists; --daemonize detaches it
  # from the caller's stdout so a caller reading our output is not held open.
  local listen=(--port "$port") ping=(redis-cli -h 127.0.0.1 -p "$port")
  if [[ -n $TLS_DIR ]]; then
    # TLS only: --port 0 closes the plaintext port. Debian 12's redis-server
    # is built with TLS; one without it stops at "Bad directive".
    listen=(--port 0 --tls-port "$port"
      --tls-cert-file "$TLS_DIR/$TLS_CERT.pem" --tls-key-file "$TLS_DIR/$TLS_CERT.key"
      --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients "$TLS_CLIENT")
    ping+=(--tls)
    # The readiness check trusts the CA's server cert only; the others are
    # there to be refused by the clients under test.
    if [[ $TLS_CERT == server ]]; then ping+=(--cacert "$TLS_DIR/ca.pem"); else ping+=(--insecure); fi
    [[ $TLS_CLIENT == yes ]] && ping+=(--cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key")
  fi
  redis-server "${listen[@]}" --bind 127.0.0.1 --protected-mode yes \
    --dir "$d" --save "" --appendonly no \
    --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" ||
    fail_with_log "$d/redis.log" "redis-server failed to start on port $port"
  while ((SECONDS < deadline)); do
    [[ -z $pid && -s $d/redis.pid ]] && pid=$(<"$d/redis.pid")
    if [[ -n $pid ]]; then
      alive "$pid" || break
      if [[ $("${ping[@]}" ping 2>/dev/null) == PONG ]]; then
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

# TLS mode: the chosen cert and key copied into the instance (PostgreSQL
# wants its key 0600 and its own), and an hba file of its own that lets TCP
# clients in over TLS only. Prints the server options that use them.
pg_tls() { # INSTANCE_DIR
  local t=$1/tls clientcert=""
  mkdir -p "$t"
  cp "$TLS_DIR/$TLS_CERT.pem" "$t/server.pem"
  cp "$TLS_DIR/$TLS_CERT.key" "$t/server.key"
  cp "$TLS_DIR/ca.pem" "$t/ca.pem"
  chmod 700 "$t"
  chmod 600 "$t/server.key"
  [[ $TLS_CLIENT == yes ]] && clientcert=" clientcert=verify-ca"
  cat >"$t/pg_hba.conf" <<EOF
# ctl.sh TLS mode: the unix socket in plaintext, TCP over TLS only.
local   all all                trust
hostssl all all 127.0.0.1/32   ${CTL_PG_AUTH:-trust}$clientcert
hostssl all all ::1/128        ${CTL_PG_AUTH:-trust}$clientcert
EOF
  if ((EUID == 0)); then chown -R postgres: "$t"; fi
  echo "-c ssl=on -c ssl_cert_file=$t/server.pem -c ssl_key_file=$t/server.key -c ssl_ca_file=$t/ca.pem -c hba_file=$t/pg_hba.conf"
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
  local options="-p $port -c listen_addresses=127.0.0.1 -k $d -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"
  [[ -n $TLS_DIR ]] && options+=" $(pg_tls "$d")"
  as_pg "$bin/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 30 -s -o "$options" \
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
  # These two make a TCP listener whatever the config file says: in TLS mode
  # the config file alone names the (ssl) listener.
  if [[ -z ${TLS:-} ]]; then
    printf 'RABBITMQ_NODE_IP_ADDRESS=127.0.0.1\nRABBITMQ_NODE_PORT=%s\n' "$AMQP_PORT"
  fi
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
  printf 'AMQP_PORT=%s\nDIST_PORT=%s\nEPMD_PORT=%s\nTLS=%s\n' "$port" "$(free_port)" "$(free_port)" \
    "${TLS_DIR:+1}" >"$d/ports"
  : >"$d/rabbitmq-env.conf" # not /etc/rabbitmq/rabbitmq-env.conf
  echo '[].' >"$d/enabled_plugins"
  # guest/guest is allowed from loopback by default; a small disk must not
  # make the broker block publishers.
  printf 'disk_free_limit.absolute = 1MB\n' >"$d/rabbitmq.conf"
  if [[ -n $TLS_DIR ]]; then
    local verify=verify_none fail=false
    [[ $TLS_CLIENT == yes ]] && verify=verify_peer fail=true
    cat >>"$d/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/$TLS_CERT.pem
ssl_options.keyfile = $TLS_DIR/$TLS_CERT.key
ssl_options.verify = $verify
ssl_options.fail_if_no_peer_cert = $fail
EOF
  fi
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
  tls_setup
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
  sed -n '2,11p' "$0" >&2
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
certs)
  [[ $# -eq 2 ]] || usage
  exec "$(dirname "$0")/certs.sh" "$2"
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
