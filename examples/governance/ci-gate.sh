#!/usr/bin/env bash
# The CI gate: run after the migrations, against the migrated database, as an operator role.
# Fails (exit 1) with every error tenancy.verify() reports and every change between the database's
# tenancy configuration and the document kept in the repository (tenancy.json, made with
# `SELECT tenancy.export_config()` and edited as code); passes (exit 0) when both are clean.
#
#   PGHOST=... PGDATABASE=... PGUSER=<an operator> examples/governance/ci-gate.sh tenancy.json
#
# Without a document, only verify()'s errors gate.
set -euo pipefail
expected=${1:-}
args=(-X -q -At -v ON_ERROR_STOP=1)
if [ -n "$expected" ]; then
    # The document travels as a psql variable, quoted by psql (:'doc'), never spliced; psql
    # interpolates variables in what it reads, not in -c, hence the statement on stdin.
    args+=(-v "doc=$(cat "$expected")")
    statement="SELECT tenancy.assert_clean(:'doc'::jsonb);"
else
    statement="SELECT tenancy.assert_clean();"
fi
if out=$(psql "${args[@]}" <<< "$statement" 2>&1); then
    echo "tenancy: clean"
else
    # The message lists each problem; `SELECT * FROM tenancy.plan_config(doc)` shows them as rows.
    printf 'tenancy: NOT clean\n%s\n' "$out" >&2
    exit 1
fi
