#!/usr/bin/env bash
# Releases the version this tree builds and opens the next one. Run it on a clean main after
# `make install-extension` (which writes the install script pgrx generates):
#   scripts/release.sh <next version>
# It (1) copies the generated install script to sql/releases/bulkhead--<version>.sql, (2) records
# it and the upgrade scripts to <version> in sql/releases/SHA256SUMS (released files never change
# again: scripts/check-releases.sh), (3) commits and tags v<version>, then (4) sets Cargo.toml to
# <next>, starts sql/upgrades/bulkhead--<version>--<next>.sql with its guard, points
# tests/upgrade.rs at <version>, and commits. Every schema change until <next> is released goes
# into that upgrade script too; tests/upgrade.rs fails until it does.
set -euo pipefail
cd "$(dirname "$0")/.."
next=${1:?usage: scripts/release.sh <next version>}
pg_config=${PG_CONFIG:-$(make -s --no-print-directory print-pg-config)}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
generated="$("$pg_config" --sharedir)/extension/bulkhead--$version.sql"
[ -z "$(git status --porcelain)" ] || { echo "release: the tree has uncommitted changes" >&2; exit 1; }
[ -f "$generated" ] || { echo "release: $generated is missing: run make install-extension" >&2; exit 1; }
if git rev-parse -q --verify "refs/tags/v$version" >/dev/null; then
    echo "release: v$version is tagged already" >&2; exit 1
fi

mkdir -p sql/releases sql/upgrades
cp "$generated" "sql/releases/bulkhead--$version.sql"
(
    cd sql/releases
    sha256sum "bulkhead--$version.sql"
    for upgrade in ../upgrades/bulkhead--*--"$version".sql; do
        if [ -e "$upgrade" ]; then sha256sum "$upgrade"; fi
    done
) >> sql/releases/SHA256SUMS
git add sql/releases
git commit -q -m "Release $version"
git tag "v$version"

sed -i "s/^version = \"$version\"/version = \"$next\"/" Cargo.toml
cargo metadata --format-version 1 >/dev/null  # brings Cargo.lock's own versions along
cat > "sql/upgrades/bulkhead--$version--$next.sql" <<SQL
-- Bulkhead $version to $next. Unreleased: every schema change goes here as well as into sql/*.sql
-- until $next is released; from then on this file never changes (scripts/check-releases.sh).
\\echo Use "ALTER EXTENSION bulkhead UPDATE TO '$next'" to load this file. \\quit
SQL
sed -i "s/^const PREVIOUS: &str = \".*\";/const PREVIOUS: \&str = \"$version\";/" tests/upgrade.rs
git add Cargo.toml Cargo.lock sql/upgrades tests/upgrade.rs
git commit -q -m "Open $next: upgrades from $version go through sql/upgrades/bulkhead--$version--$next.sql"
echo "released v$version; this tree builds $next"
