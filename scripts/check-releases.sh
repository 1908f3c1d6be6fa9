#!/usr/bin/env bash
# Released extension scripts are never edited (pgvector's and ParadeDB's discipline): an install
# script under sql/releases/ and an upgrade script under sql/upgrades/ are released with the
# version they install or upgrade to. This checks that
#  - every file sql/releases/SHA256SUMS lists (written when a version is released) is unchanged;
#  - where the release's tag (vX.Y.Z) is in this clone, each file of that version equals the tag's;
#  - every upgrade script starts with the guard that keeps psql from running it by hand;
#  - every released version has an upgrade script to the next one, up to this version.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
complain() { echo "check-releases: $*" >&2; fail=1; }

(cd sql/releases && sha256sum --quiet --strict -c SHA256SUMS) || complain "a released script changed (sql/releases/SHA256SUMS)"

shopt -s nullglob
for file in sql/releases/bulkhead--*.sql sql/upgrades/bulkhead--*--*.sql; do
    version=${file##*--}
    version=${version%.sql}
    if git rev-parse -q --verify "refs/tags/v$version" >/dev/null 2>&1; then
        git diff --quiet "v$version" -- "$file" || complain "$file differs from its release v$version"
    fi
done

for file in sql/upgrades/bulkhead--*--*.sql; do
    sed -n '1,5p' "$file" | grep -q '^\\echo Use "ALTER EXTENSION bulkhead UPDATE' \
        || complain "$file does not start with the \\echo guard"
done

# The chain: each released version upgrades to a later one, ending at this version.
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for file in sql/releases/bulkhead--*.sql; do
    version=${file##*--}
    version=${version%.sql}
    [ "$version" = "$current" ] && continue
    seen=$version
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        [ "$seen" = "$current" ] && break
        next=$(ls sql/upgrades/bulkhead--"$seen"--*.sql 2>/dev/null | head -1)
        [ -n "$next" ] || break
        seen=${next##*--}
        seen=${seen%.sql}
    done
    [ "$seen" = "$current" ] || complain "no upgrade path from $version to $current under sql/upgrades/"
done
[ "$fail" = 0 ] && echo "==> released scripts unchanged; upgrade paths lead to $current"
exit "$fail"
