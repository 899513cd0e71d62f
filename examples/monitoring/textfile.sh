#!/usr/bin/env bash
# Prometheus without an SQL exporter: write tenancy.metrics() (text exposition) where
# node_exporter's textfile collector reads it, atomically. Run it every 15 s to 60 s (cron, a
# systemd timer) as a role with the privileges of pg_monitor.
#
#   PGHOST=... PGDATABASE=... PGUSER=exporter examples/monitoring/textfile.sh /var/lib/node_exporter/textfile
set -euo pipefail
dir=${1:?the textfile collector directory}
tmp=$(mktemp "$dir/.pg_tenancy.XXXXXX")
psql -X -q -At -v ON_ERROR_STOP=1 -c "SELECT tenancy.metrics()" > "$tmp"
mv "$tmp" "$dir/pg_tenancy.prom"
