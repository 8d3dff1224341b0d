#!/usr/bin/env bash
# Every benchmark, one after the other (never two at once: they would share the CPUs),
# then the plots and the Markdown tables. Sizes from the environment:
#   BENCH_DURATION (s per cell, 3)  BENCH_REPEATS (3)  BENCH_USERS (100000)  BENCH_GROUPS (1000)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
D=${BENCH_DURATION:-3}
R=${BENCH_REPEATS:-3}
$PY bench/bench_scim.py --duration "$D" --repeats "$R"
$PY bench/bench_latency.py --n 300
$PY bench/bench_saml.py --duration "$D" --repeats "$R"
$PY bench/bench_scaling.py --duration "$D" --repeats "$R"
$PY bench/bench_sync.py --users "${BENCH_USERS:-100000}" --groups "${BENCH_GROUPS:-1000}" --members 20
# The feed's benchmarks (issue 12); on a shared Postgres server run them against a private
# cluster (bench/private_pg.sh start; BENCH_ADMIN_DSN=...), see bench/README.md.
$PY bench/bench_events.py --rounds "$R"
$PY bench/bench_webhooks.py --rounds "$R"
$PY bench/plots.py
$PY bench/report.py > bench/results/tables.md
echo "tables: bench/results/tables.md"
