#!/usr/bin/env bash
# A private PostgreSQL cluster for the feed benchmarks (bench_events, bench_webhooks):
#
#   bench/private_pg.sh start [DIR] [PORT]   # default /tmp/provisio-bench-pg, 55432
#   BENCH_ADMIN_DSN=postgresql://postgres@127.0.0.1:55432/postgres .venv/bin/python bench/bench_webhooks.py
#   bench/private_pg.sh stop [DIR]
#
# Why: the event feed shows a row only once every transaction with a lower xid has ended,
# and xids are cluster-wide, so any writing transaction in any database of a shared server
# (other applications, other test suites' CREATE/DROP DATABASE) delays the feed and the
# webhooks. Measured on a shared server, the latency is the other users'. Same server
# binaries and default settings as the machine's own cluster (initdb defaults, fsync on).
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:-/tmp/provisio-bench-pg}
port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg=()
if [ "$(id -u)" = "0" ]; then as_pg=(runuser -u postgres --); fi
case "$cmd" in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = "0" ] && chown postgres: "$dir"
      "${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir" start >/dev/null
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: $0 start|stop [DIR] [PORT]" >&2
    exit 2
    ;;
esac
