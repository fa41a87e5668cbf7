# Shared by infra/clickhouse/start and stop: find the Python that has the chdb wheel.
# The server itself is store/local_server (python -m store.local_server ...).

CLICKHOUSE_INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLICKHOUSE_REPO_ROOT="$(cd "$CLICKHOUSE_INFRA_DIR/../.." && pwd)"

clickhouse_die() {
  echo "clickhouse: $*" >&2
  exit 1
}

# GOVMETER_PYTHON, else the project's .venv, else python3 on PATH; it must import chdb.
clickhouse_python() {
  local candidate
  for candidate in "${GOVMETER_PYTHON:-}" "$CLICKHOUSE_REPO_ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    if "$candidate" -c "import chdb" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  clickhouse_die "no Python with the chdb package found: run 'make setup' (it creates .venv), or set GOVMETER_PYTHON to a Python that has the project installed"
}

clickhouse_run() {
  local python
  python="$(clickhouse_python)"
  PYTHONPATH="$CLICKHOUSE_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m store.local_server "$@"
}
