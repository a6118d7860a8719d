#!/usr/bin/env bash
# The release rules, checked in CI:
# - a released install script (sql/released/flowgate--<version>.sql) never changes: it matches
#   its line in sql/released/SHA256SUMS and, where the history is at hand, its copy at the tag
#   v<version>; every tag v<version> has its released script;
# - a released upgrade script (sql/flowgate--<from>--<to>.sql with <to> released) never changes
#   either: it matches its copy at the tag v<to> (and its checksum, when SHA256SUMS lists it);
# - every released version has a chain of upgrade scripts to the version in Cargo.toml.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
fail() { echo "release_check: $*" >&2; exit 1; }

current=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ -n $current ]] || fail "no version in Cargo.toml"
[[ -f sql/released/SHA256SUMS ]] || fail "sql/released/SHA256SUMS is missing"

shopt -s nullglob
released=()
for f in sql/released/flowgate--*.sql; do
    v=${f#sql/released/flowgate--}; v=${v%.sql}
    released+=("$v")
    grep -q "  flowgate--$v.sql\$" sql/released/SHA256SUMS || fail "$f has no checksum in sql/released/SHA256SUMS"
done
[[ ${#released[@]} -gt 0 ]] || fail "no released install script in sql/released/"
# Every checksum line names a file that is there (a deleted release is caught here too).
while read -r _ name; do
    [[ -f sql/released/$name || -f sql/$name ]] || fail "SHA256SUMS lists $name, which is missing"
done < sql/released/SHA256SUMS
(cd sql/released && sed 's#  \(flowgate--[^-]*--.*\)$#  ../\1#' SHA256SUMS | sha256sum --quiet -c -) \
    || fail "a released script changed (sql/released/SHA256SUMS)"

# Against the tags: each released file equals its copy at its release's tag.
tags=()
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t tags < <(git tag --list 'v*' | sed 's/^v//')
fi
if [[ ${#tags[@]} -eq 0 ]]; then
    echo "release_check: no release tags in this checkout: checked the checksums only"
else
    for v in "${tags[@]}"; do
        f=sql/released/flowgate--$v.sql
        [[ -f $f ]] || fail "tag v$v has no released install script $f"
        git show "v$v:$f" 2>/dev/null | cmp -s - "$f" || fail "$f differs from its copy at tag v$v"
        for u in sql/flowgate--*--"$v".sql; do
            git show "v$v:$u" 2>/dev/null | cmp -s - "$u" || fail "$u differs from its copy at tag v$v"
        done
    done
fi

# Every released version reaches the current one through upgrade scripts.
reach() {  # reach FROM SEEN: succeeds when a chain of sql/flowgate--FROM--*.sql leads to $current
    local from=$1 seen=$2 next s
    [[ $from == "$current" ]] && return 0
    for s in sql/flowgate--"$from"--*.sql; do
        next=${s#sql/flowgate--"$from"--}; next=${next%.sql}
        [[ " $seen " == *" $next "* ]] && continue
        reach "$next" "$seen $next" && return 0
    done
    return 1
}
for v in "${released[@]}"; do
    reach "$v" "$v" || fail "no chain of upgrade scripts from released $v to $current (sql/flowgate--$v--....sql)"
done
echo "release_check: ${#released[@]} released version(s) (${released[*]}) unchanged${tags:+ (and equal to their tags)}, each upgrades to $current"
