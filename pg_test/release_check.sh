#!/usr/bin/env bash
# The release rules, checked in CI:
# - a released install script (sql/released/flowgate--<version>.sql) never changes: each one
#   matches its line in sql/released/SHA256SUMS, and (where the repository history is at hand)
#   no commit after the one that added it modified it;
# - a released upgrade script (sql/flowgate--<from>--<to>.sql with <to> released) never changes
#   either, by the same history rule;
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
(cd sql/released && sha256sum --quiet -c SHA256SUMS) || fail "a released install script changed (sql/released/SHA256SUMS)"

# History: a released file is added once and never modified afterwards.
if git rev-parse --git-dir >/dev/null 2>&1; then
    for f in sql/released/flowgate--*.sql sql/flowgate--*--*.sql; do
        to=${f##*--}; to=${to%.sql}
        [[ $f == sql/released/* ]] || [[ " ${released[*]} " == *" $to "* ]] || continue
        changed=$(git log --format=%h --diff-filter=M -- "$f" | head -n 1)
        [[ -z $changed ]] || fail "$f was changed after its release (commit $changed); ship the change as a new upgrade script"
    done
fi

# Every released version reaches the current one through upgrade scripts.
reach() {  # reach FROM: succeeds when a chain of sql/flowgate--FROM--*.sql leads to $current
    local from=$1 seen=$2 next
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
echo "release_check: ${#released[@]} released version(s) (${released[*]}) unchanged, each upgrades to $current"
