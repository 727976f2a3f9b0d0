#!/usr/bin/env bash
# Speed and memory of `gazette subscribers import`, on Postgres and SQLite.
#
#   bench/import.sh [N]       N rows (default 1000000)
#
# Writes a CSV of N subscribers (`email,name,digests`, about 60 bytes a
# row, every tenth with two digests), imports it into a fresh Postgres
# database and a fresh SQLite file, and reports for each the wall time,
# rows per second and peak resident memory (/usr/bin/time -v). Then it
# imports the same file again into each store (every row an update).
#
# Environment:
#   GAZETTE_BIN   a prebuilt gazette binary (default: <repo>/target/release/gazette)
#   BENCH_DB      Postgres database name (default: gazette_bench_import;
#                 dropped and recreated)
#   BENCH_PG      server URL without database
#                 (default: postgres://postgres@127.0.0.1:5432)
#   BENCH_TIMEOUT limit in seconds for each step (default: 1800)

set -euo pipefail

N=${1:-1000000}
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [N]   (N: number of rows, a positive integer)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DB=${BENCH_DB:-gazette_bench_import}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
STEP_TIMEOUT=${BENCH_TIMEOUT:-1800}
BIN=${GAZETTE_BIN:-$REPO/target/release/gazette}
export PGOPTIONS="-c client_min_messages=warning"
[[ $DB =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "BENCH_DB must be a plain lowercase identifier" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no gazette binary at $BIN" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) is required" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

say() { printf '==> %s\n' "$*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gazette-import.XXXXXX")
cleanup() {
    local rc=$?
    timeout 60 psql -X -q "$PG/postgres" -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

say "writing $N rows to $WORK/readers.csv"
awk -v n="$N" 'BEGIN {
    print "email,name,digests"
    for (i = 1; i <= n; i++)
        printf "reader%d@import.example.org,Reader %d,%s\n", i, i, (i % 10 == 0 ? "daily;weekly" : "daily")
}' >"$WORK/readers.csv"
say "$(stat -c %s "$WORK/readers.csv") bytes"

config() {
    cat <<EOF
[database]
url = "$1"

[mail]
transport = "outbox"
from = "Gazette Bench <digest@bench.example.org>"

[web]
base_url = "https://news.bench.example.org"

[templates]
dir = "$REPO/templates"

[[digests]]
name = "daily"
title = "Daily"
schedule = "0 7 * * *"

[[digests]]
name = "weekly"
title = "Weekly"
schedule = "0 7 * * 1"
EOF
}

cd "$WORK"
measure() { # backend label config
    local load t0 t1 wall rss
    load=$(loadavg)
    t0=$(date +%s%N)
    /usr/bin/time -v -o "$WORK/time.txt" timeout "$STEP_TIMEOUT" \
        "$BIN" --config "$3" subscribers import "$WORK/readers.csv" >"$WORK/out.txt" 2>"$WORK/err.txt" ||
        { tail -5 "$WORK/err.txt" >&2; exit 1; }
    t1=$(date +%s%N)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$WORK/time.txt")
    printf '| %s | %s | %d | %s | %.0f | %s | %s |\n' "$1" "$2" "$N" "$wall" \
        "$(awk -v n="$N" -v w="$wall" 'BEGIN { print n / w }')" "$rss" "$load"
    cat "$WORK/out.txt" >&2
}

psql -X -q -v ON_ERROR_STOP=1 "$PG/postgres" -c "drop database if exists $DB with (force)" -c "create database $DB"
config "$PG/$DB" >"$WORK/pg.toml"
config "sqlite://$WORK/import.db" >"$WORK/sqlite.toml"
"$BIN" --config "$WORK/pg.toml" migrate >/dev/null
"$BIN" --config "$WORK/sqlite.toml" migrate >/dev/null

echo
echo "| store | import | rows | seconds | rows/s | peak RSS MB | load average |"
echo "|---|---|---|---|---|---|---|"
measure postgres new "$WORK/pg.toml"
measure sqlite new "$WORK/sqlite.toml"
measure postgres again "$WORK/pg.toml"
measure sqlite again "$WORK/sqlite.toml"
