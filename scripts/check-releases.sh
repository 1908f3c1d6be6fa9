#!/usr/bin/env bash
# Released extension scripts are never edited (pgvector's and ParadeDB's discipline): an install
# script under sql/releases/ and an upgrade script under sql/upgrades/ are released with the
# version they install or upgrade to, and recorded in sql/releases/SHA256SUMS then. This checks
#  - that every file SHA256SUMS lists is unchanged, against the checksums and against the file as
#    the commit that recorded it had it (git history: an edit of a file and its checksum together
#    shows), and against the release's tag (vX.Y.Z) where the clone has it;
#  - that no upgrade script to a released version exists that the release did not record;
#  - that every upgrade script starts with the guard that keeps psql from running it by hand;
#  - that every released version has an upgrade path to this version.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
fail=0
complain() { echo "check-releases: $*" >&2; fail=1; }
sums=sql/releases/SHA256SUMS

(cd sql/releases && sha256sum --quiet --strict -c SHA256SUMS) || complain "a released script changed ($sums)"

released_versions=()
while read -r _ listed; do
    file=$(realpath -m --relative-to=. "sql/releases/$listed")
    version=${file##*--}
    version=${version%.sql}
    released_versions+=("$version")
    # The commit that recorded it, and the file as that commit had it.
    recorded=$(git log --diff-filter=AM --format=%H -S "$listed" -- "$sums" | tail -1)
    if [ -z "$recorded" ] && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
        echo "check-releases: a shallow clone: $listed checked against $sums only" >&2
    elif [ -z "$recorded" ]; then
        complain "no commit records $listed in $sums"
    elif ! git diff --quiet "$recorded" -- "$file"; then
        complain "$file differs from its release (commit ${recorded:0:10})"
    elif [ "$(git show "$recorded:$sums" | grep -F "  $listed" || true)" != "$(grep -F "  $listed" "$sums")" ]; then
        complain "$sums changed the checksum of $listed since its release (commit ${recorded:0:10})"
    fi
    if git rev-parse -q --verify "refs/tags/v$version" >/dev/null 2>&1; then
        git diff --quiet "v$version" -- "$file" "$sums" || complain "$file or $sums differs from the tag v$version"
    fi
done < "$sums"

for file in sql/upgrades/bulkhead--*--*.sql; do
    sed -n '1,5p' "$file" | grep -q '^\\echo Use "ALTER EXTENSION bulkhead UPDATE' \
        || complain "$file does not start with the \\echo guard"
    target=${file##*--}
    target=${target%.sql}
    for version in "${released_versions[@]}"; do
        if [ "$version" = "$target" ] && ! grep -qF "  ../upgrades/${file##*/}" "$sums"; then
            complain "$file upgrades to the released $target but that release did not record it"
        fi
    done
done

# The chain: each released version upgrades, step by step, to this version.
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for file in sql/releases/bulkhead--*.sql; do
    version=${file##*--}
    version=${version%.sql}
    seen=$version
    for _ in $(seq 1 50); do
        [ "$seen" = "$current" ] && break
        steps=(sql/upgrades/bulkhead--"$seen"--*.sql)
        [ "${#steps[@]}" -gt 0 ] || break
        seen=${steps[0]##*--}
        seen=${seen%.sql}
    done
    [ "$seen" = "$current" ] || complain "no upgrade path from $version to $current under sql/upgrades/"
done
[ "$fail" = 0 ] && echo "==> released scripts unchanged; upgrade paths lead to $current"
exit "$fail"
