#!/usr/bin/env bash
# `make db`'s database: created with the extension the first time, and from then on upgraded,
# never dropped with its data:
#  - at an older version: ALTER EXTENSION bulkhead UPDATE (the scripts under sql/upgrades/);
#  - at this version, when its script changed since the database was made (development between
#    releases, which has no upgrade script of its own yet): the data is carried into the new
#    script by a dump and a restore, which keep everything (README: Backup and restore). Only if
#    the data no longer fits (a column it fills is gone) is the database made afresh, saying so.
# Usage: scripts/dev-database.sh <PostgreSQL bin dir> <superuser URL without database> <database> <stamp file> <script digest>
set -euo pipefail
bin=$1 super=$2 db=$3 stamp=$4 digest=$5
psql() { "$bin/psql" -X -v ON_ERROR_STOP=1 -q "$@"; }
in_postgres() { psql -d "$super/postgres" -c "set client_min_messages = warning" "$@"; }

fresh() {
    in_postgres -c "drop database if exists $db with (force)" -c "create database $db"
    psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
}

if [ -z "$(psql -d "$super/postgres" -Atc "select 1 from pg_database where datname = '$db'")" ]; then
    fresh
else
    installed=$(psql -d "$super/$db" -Atc "select extversion from pg_extension where extname = 'bulkhead'")
    available=$(psql -d "$super/$db" -Atc "select default_version from pg_available_extensions where name = 'bulkhead'")
    if [ -z "$installed" ]; then
        psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
    elif [ "$installed" != "$available" ]; then
        echo "==> $db: upgrading bulkhead $installed to $available"
        psql -d "$super/$db" -c "alter extension bulkhead update"
    elif [ "$(cat "$stamp" 2>/dev/null || true)" != "$digest" ]; then
        echo "==> $db: the $available script changed; carrying the data over by dump and restore"
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        "$bin/pg_dump" -Fc -f "$work/db.dump" "$super/$db"
        in_postgres -c "drop database if exists ${db}_next with (force)" -c "create database ${db}_next"
        if "$bin/pg_restore" --single-transaction --exit-on-error -d "$super/${db}_next" "$work/db.dump" 2>"$work/restore.err"; then
            in_postgres -c "drop database $db with (force)" -c "alter database ${db}_next rename to $db"
        else
            echo "==> $db: its data does not fit the new script, so it is made afresh: $(head -c 300 "$work/restore.err")"
            in_postgres -c "drop database ${db}_next with (force)"
            fresh
        fi
    fi
fi
echo "$digest" > "$stamp"
