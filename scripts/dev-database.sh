#!/usr/bin/env bash
# `make db`'s database: created with the extension the first time, and from then on upgraded,
# never dropped with its data:
#  - made from a released script (its digest is the release's): ALTER EXTENSION bulkhead UPDATE,
#    through the scripts under sql/upgrades/;
#  - made from a script no release has (development between releases): the data is carried
#    into the new script by a dump and a restore, which keep everything (README: Backup and
#    restore). If the data does not fit (a column it fills is gone), the database is left as it
#    was and make db fails, saying how to start afresh.
# Usage: scripts/dev-database.sh <PostgreSQL bin dir> <superuser URL without database> <database> <stamp file> <script digest>
set -euo pipefail
bin=$1 super=$2 db=$3 stamp=$4 digest=$5
psql() { "$bin/psql" -X -v ON_ERROR_STOP=1 -q "$@"; }
in_postgres() { psql -d "$super/postgres" -c "set client_min_messages = warning" "$@"; }

fresh() {
    in_postgres -c "drop database if exists $db with (force)" -c "create database $db"
    psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
}

# Carries the data into the current script: a dump restored into <db>_next, which then takes
# <db>'s name. If the data does not fit, <db> is left exactly as it was and make db fails.
carry_over() {
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$bin/pg_dump" -Fc -f "$work/db.dump" "$super/$db"
    in_postgres -c "drop database if exists ${db}_next with (force)" -c "create database ${db}_next"
    if ! "$bin/pg_restore" --single-transaction --exit-on-error -d "$super/${db}_next" "$work/db.dump" 2>"$work/restore.err"; then
        in_postgres -c "drop database ${db}_next with (force)"
        echo "make db: the data of $db does not fit the new script: $(head -c 400 "$work/restore.err")" >&2
        echo "make db: $db is kept as it was. To start afresh: $bin/psql -d $super/postgres -c 'drop database $db' && make db" >&2
        exit 1
    fi
    # Renamed aside before the new one takes the name: the data is never without a database.
    in_postgres -c "drop database if exists ${db}_previous with (force)"
    in_postgres -c "alter database $db rename to ${db}_previous"
    in_postgres -c "alter database ${db}_next rename to $db"
    in_postgres -c "drop database ${db}_previous with (force)"
}

if [ -z "$(psql -d "$super/postgres" -Atc "select 1 from pg_database where datname = '$db'")" ]; then
    fresh
else
    installed=$(psql -d "$super/$db" -Atc "select extversion from pg_extension where extname = 'bulkhead'")
    available=$(psql -d "$super/$db" -Atc "select default_version from pg_available_extensions where name = 'bulkhead'")
    stamped=$(cat "$stamp" 2>/dev/null || true)
    released="sql/releases/bulkhead--$installed.sql"
    if [ -z "$installed" ]; then
        psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
    elif [ "$installed" != "$available" ] && [ -f "$released" ] && [ "$stamped" = "$(sha256sum < "$released")" ]; then
        echo "==> $db: upgrading bulkhead $installed to $available"
        psql -d "$super/$db" -c "alter extension bulkhead update"
    elif [ "$installed" != "$available" ] || [ "$stamped" != "$digest" ]; then
        # A script of this version that changed, or an earlier version's that no release has
        # (a development build of it): no upgrade script describes the difference.
        echo "==> $db: its bulkhead $installed script is not the release's or this one's; carrying the data over by dump and restore"
        carry_over
    fi
fi
echo "$digest" > "$stamp"
