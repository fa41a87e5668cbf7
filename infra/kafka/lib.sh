# Shared settings and helpers for infra/kafka/start and infra/kafka/stop.
# Sourced, not executed.
#
# Environment (all optional):
#   KAFKA_PORT              client (PLAINTEXT) port on 127.0.0.1        [9092]
#   KAFKA_CONTROLLER_PORT   KRaft controller port on 127.0.0.1   [free port from KAFKA_PORT+10000]
#   KAFKA_DATA_DIR          data dir, relative to the current dir        [./var/kafka]
#   KAFKA_VERSION           Kafka release fetched from Maven Central     [4.1.1]
#   KAFKA_JARS_DIR          jar cache       [$HOME/.cache/govmeter/kafka-$KAFKA_VERSION]
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to serve clients [90]
#   KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL  [30]
#   KAFKA_HEAP_OPTS         JVM heap flags                     [-Xmx512m -Xms256m]
#   JAVA_HOME               Java 17+ to use (else `java` on PATH)

KAFKA_SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_HOST=127.0.0.1
KAFKA_NODE_ID=1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_JARS_DIR="${KAFKA_JARS_DIR:-${HOME:-/tmp}/.cache/govmeter/kafka-${KAFKA_VERSION}}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_LOG4J_CONFIG="$KAFKA_SCRIPT_DIR/log4j2.properties"

kafka_say() { printf 'kafka: %s\n' "$*"; }
kafka_err() { printf 'kafka: error: %s\n' "$*" >&2; }
kafka_die() { kafka_err "$*"; exit 1; }

kafka_check_port_var() {
  local name=$1 value=$2
  [[ "$value" =~ ^[0-9]+$ ]] && (( value >= 1 && value <= 65535 )) \
    || kafka_die "$name must be a TCP port number (1-65535), got '$value'"
}

# Absolute path of $KAFKA_DATA_DIR (relative paths are taken from the current
# directory). Does not create anything.
kafka_abs_data_dir() {
  local dir="${KAFKA_DATA_DIR:-./var/kafka}"
  [[ "$dir" == /* ]] || dir="$PWD/$dir"
  # Normalise "." / ".." / duplicate slashes without requiring the dir to exist.
  local part parts out=()
  IFS=/ read -r -a parts <<<"$dir"
  for part in "${parts[@]}"; do
    case "$part" in
      ''|.) ;;
      ..) ((${#out[@]})) && unset 'out[${#out[@]}-1]' ;;
      *) out+=("$part") ;;
    esac
  done
  local IFS=/
  printf '/%s\n' "${out[*]}"
}

# Path of the java binary (JAVA_HOME first, then PATH), or empty.
kafka_java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  else
    command -v java 2>/dev/null || true
  fi
}

# Command line (space separated) of a pid, or empty if it is gone.
kafka_cmdline() {
  local pid=$1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true
  else
    ps -o args= -p "$pid" 2>/dev/null || true
  fi
}

# True if $1 is a live java process running kafka.Kafka with our data dir's
# server.properties.
kafka_is_our_broker() {
  local pid=$1 data_dir=$2 cmd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(kafka_cmdline "$pid")"
  [[ "$cmd" == *java* && "$cmd" == *" kafka.Kafka "* && "$cmd" == *"$data_dir/server.properties"* ]]
}

# Pid from the pid file if it names our live broker, else empty.
kafka_running_pid() {
  local data_dir=$1 pid
  [[ -f "$data_dir/kafka.pid" ]] || return 0
  pid="$({ tr -dc '0-9' <"$data_dir/kafka.pid"; } 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kafka_is_our_broker "$pid" "$data_dir"; then
    printf '%s\n' "$pid"
  fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
kafka_port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$KAFKA_HOST" "$1" 2>/dev/null
}

# Best-effort description of whoever listens on port $1.
kafka_port_owner() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null \
    | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1, pid \2/p' | head -n1
}
