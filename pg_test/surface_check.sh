#!/usr/bin/env bash
# usage: pg_test/surface_check.sh INSTALL_SQL [SURFACE_SQL...]
#
# Checks that CREATE EXTENSION does not depend on a lucky ordering: every schema-qualified
# function that a surface file calls or names must be created earlier in the generated install
# script (INSTALL_SQL, e.g. .../extension/flowgate--0.1.0.sql) than that surface file's block,
# or by the surface file itself. Without SURFACE_SQL arguments, checks every sql/*/surface.sql
# of the repository holding this script.
#
# Rules:
# - The install script is a series of blocks, each opened by "/* <begin connected objects> */".
#   A surface file's block is the one block containing the file's first non-blank line.
# - A function is created by CREATE [OR REPLACE] FUNCTION|PROCEDURE [schema.]name; the name may
#   be double-quoted; without a schema it is in flowgate (the extension's schema).
# - A use is schema.name followed by "(" (a call, EXECUTE FUNCTION, GRANT ... ON FUNCTION
#   ...(...)), or FUNCTION|PROCEDURE|ROUTINE schema.name without "(", where schema is one of
#   flowgate, ops, intake, capacity, provisioning. Not a use: a table name followed by "("
#   (after INTO, TABLE, EXISTS, REFERENCES, ON, ONLY, VIEW, COPY, ANALYZE, or "::").
# - A use of a Rust function (a block "-- flowgate::<module path>::<name>" creating it with
#   'MODULE_PATHNAME', '<rust name>_wrapper') must also be in the surface block's "-- requires:"
#   list (as pgrx matches it: the path, or a tail of it): created earlier is not enough, since
#   pgrx orders what nothing requires as it likes.
# - Not seen: names inside SQL text a function generates and a DO block executes (the ops
#   persona and value statements); their block's requires name those functions by hand.
# - Comments (-- and /* */) and single-quoted literals are ignored, also across lines; the
#   bodies of dollar-quoted functions are read as code. Names are compared in lower case.
# - Exit status: 0 all uses satisfied, 1 some use unsatisfied, 2 usage or block lookup error.
set -euo pipefail

die() { echo "surface_check: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: $0 INSTALL_SQL [SURFACE_SQL...]"
install=$1; shift
[[ -f $install ]] || die "$install: no such file"

if [[ $# -eq 0 ]]; then
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    shopt -s nullglob
    set -- "$root"/sql/*/surface.sql
    shopt -u nullglob
    [[ $# -gt 0 ]] || die "no surface files match $root/sql/*/surface.sql"
fi

# Input: the install script, then one surface file; KEY = the surface file's first non-blank line.
# Output: "checked USES NAMES BLOCKLINE", one "missing schema.name" line per unsatisfied
# name; or a single "error: ..." line.
# shellcheck disable=SC2016
prog='
# Blank out comments and string literals; st keeps the state across lines:
# 0 code, 1 in '"'"'...'"'"', 2 in E'"'"'...'"'"' (backslash escapes), 3 in /* */.
function clean(s,   out, i, n, c) {
    out = ""; n = length(s)
    for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (st == 3) { if (substr(s, i, 2) == "*/") { st = 0; i++ }; continue }
        if (st == 2 && c == "\\") { i++; continue }
        if (st) { if (c == "'"'"'") st = 0; continue }
        if (substr(s, i, 2) == "--") break
        if (substr(s, i, 2) == "/*") { st = 3; i++; out = out " "; continue }
        if (c == "'"'"'") {
            st = (substr(s, i - 1, 1) ~ /[eE]/ && substr(s, i - 2, 1) !~ /[A-Za-z0-9_$]/) ? 2 : 1
            c = " "
        }
        out = out c
    }
    return tolower(out)
}
# "ops."name"" -> ops.name; "name" -> flowgate.name
function norm(t) {
    gsub(/"/, "", t)
    return (t ~ /[.]/) ? t : "flowgate." t
}
# Record the functions line s creates (install script: made[], first line; surface file: self[])
# and blank them out.
function creations(s,   t, r) {
    while (match(s, "create[ \t]+(or[ \t]+replace[ \t]+)?(function|procedure)[ \t]+" NAME)) {
        t = substr(s, RSTART, RLENGTH)
        sub("^create[ \t]+(or[ \t]+replace[ \t]+)?(function|procedure)[ \t]+", "", t)
        t = norm(t)
        if (f > 1) self[t] = 1; else { if (!(t in made)) made[t] = FNR; lastmade = t }
        r = sprintf("%" RLENGTH "s", "")
        s = substr(s, 1, RSTART - 1) r substr(s, RSTART + RLENGTH)
    }
    return s
}
# Record the uses in line s (count and used[]).
function uses(s,   pos, t, pre, w) {
    pos = 1
    while (match(substr(s, pos), USE)) {
        t = substr(s, pos + RSTART - 1, RLENGTH)
        pre = substr(s, 1, pos + RSTART - 2)
        pos += RSTART + RLENGTH - 1
        if (pre ~ /[a-z0-9_$."]$/) continue           # part of a longer name
        if (t !~ /[(]$/ && t !~ /^(function|procedure|routine)[ \t]/) continue
        w = lastword
        if (match(pre, /[^ \t]+[ \t]*$/)) w = substr(pre, RSTART)
        sub(/[ \t]+$/, "", w)
        if (t !~ /^(function|procedure|routine)[ \t]/ && (w ~ /::$/ || w ~ /^(into|table|exists|references|on|only|view|copy|analyze)$/)) continue
        sub(/^(function|procedure|routine)[ \t]+/, "", t)
        sub(/[ \t]*[(]$/, "", t)
        t = norm(t); if (!(t in used)) nnames++
        used[t]++; nuses++
    }
}
BEGIN {
    ID = "\"?[a-z_][a-z0-9_$]*\"?"
    NAME = "(" ID "[.])?" ID
    SCHEMA = "\"?(flowgate|ops|intake|capacity|provisioning)\"?[.]"
    USE = "((function|procedure|routine)[ \t]+)?" SCHEMA ID "([ \t]*[(])?"
    key = ENVIRON["KEY"]; sub(/\r$/, "", key)
}
FNR == 1 { f++; st = 0; lastword = "" }
f == 1 && $0 == "/* <begin connected objects> */" { st = 0; begin = FNR; block++; modp = ""; lastmade = ""; inreq = 0 }
f == 1 && index($0, key) && hit[block]++ == 0 { nblocks++; bstart = begin; sblock = block }
# A block header: "-- requires:" then one "--   name" line per requirement.
f == 1 && inreq && /^--   / { req[block, substr($0, 6)] = 1; next }
f == 1 { inreq = ($0 == "-- requires:") }
# A Rust function: "-- flowgate::module::path::sql_name", then its CREATE FUNCTION, then
# AS MODULE_PATHNAME and its C symbol, the Rust name followed by _wrapper: its path is the
# module path and the Rust name.
f == 1 && /^-- flowgate::/ { modp = substr($0, 4); sub(/^flowgate::/, "", modp); sub(/::[^:]*$/, "", modp) }
f == 1 && modp != "" && match($0, /'"'"'MODULE_PATHNAME'"'"', '"'"'[a-z0-9_]+_wrapper'"'"'/) {
    sym = substr($0, RSTART + 20, RLENGTH - 29)
    if (lastmade != "") rust[lastmade] = rust[lastmade] " " modp "::" sym
}
f == 1 { creations(clean($0)); next }
{
    s = creations(clean($0))
    uses(s)
    if (match(s, /[^ \t]+[ \t]*$/)) { lastword = substr(s, RSTART); sub(/[ \t]+$/, "", lastword) }
}
END {
    if (nblocks != 1) { print "error: its first line is in " nblocks + 0 " blocks of the install script, expected 1"; exit }
    print "checked " nuses + 0 " " nnames + 0 " " bstart
    for (t in used) {
        if (!(t in self) && !((t in made) && made[t] < bstart)) print "missing " t
        # A Rust function used must be named in the requires of the block, not just come first.
        if (t in rust && !(t in self)) {
            n = split(rust[t], ps, " ")
            for (i = 1; i <= n; i++) {
                ok = 0
                for (k in req) {
                    split(k, kk, SUBSEP)
                    if (kk[1] != sblock) continue
                    r = kk[2]
                    if (ps[i] == r || (length(ps[i]) > length(r) + 2 && substr(ps[i], length(ps[i]) - length(r) - 1) == "::" r)) ok = 1
                }
                if (!ok) print "unrequired " t " " ps[i]
            }
        }
    }
}
'

failed=0 total=0
for file in "$@"; do
    [[ -f $file ]] || die "$file: no such file"
    key=$(awk 'NF { print; exit }' "$file")
    [[ -n $key ]] || die "$file: empty"
    out=$(KEY=$key awk "$prog" "$install" "$file" | LC_ALL=C sort)
    while read -r what a b c; do
        case $what in
            error:)  die "$file: ${out#error: }" ;;
            missing) echo "surface_check: $file: $a is used but not created before the file (add it to the file's requires)" >&2
                     failed=$((failed + 1)) ;;
            unrequired) echo "surface_check: $file: $a (Rust function $b) is used but not in the file's requires: it comes first only by luck" >&2
                     failed=$((failed + 1)) ;;
            checked) echo "surface_check: $file: $a uses of $b functions checked (block at line $c)"
                     total=$((total + a)) ;;
        esac
    done <<<"$out"
done

if [[ $failed -gt 0 ]]; then
    echo "surface_check: FAILED: $failed use(s) of functions not created before, or not required by, their surface file" >&2
    exit 1
fi
echo "surface_check: OK: $# surface file(s), $total uses, all created before use"
