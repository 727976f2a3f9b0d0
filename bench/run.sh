#!/usr/bin/env bash
# Throughput and memory benchmark of `gazette send` over SMTP.
#
#   bench/run.sh [N]          N subscribers (default 100000)
#
# Seeds a fresh Postgres database with 5 articles and N confirmed
# subscribers, sends one digest to all of them through Postfix's smtp-sink
# on 127.0.0.1 (which accepts and discards every message), and measures wall
# time and peak resident memory with /usr/bin/time -v. Then it measures the
# ceiling: Postfix's smtp-source sending N messages of the same size to the
# same sink with the same concurrency. Prints both rates, their ratio and
# the peak RSS, with the time from start to the first message smtp-sink
# received and to the end of planning. See docs/benchmarks.md.
#
# Environment:
#   GAZETTE_BIN        a prebuilt gazette binary (default: build it with
#                      `cargo build --release` into CARGO_TARGET_DIR)
#   CARGO_TARGET_DIR   where to build (default: <repo>/target)
#   BENCH_DB           database name (default: gazette_bench; dropped and
#                      recreated)
#   BENCH_PG           server URL without database
#                      (default: postgres://postgres@127.0.0.1:5432)
#   BENCH_PORT         first port tried for smtp-sink (default: 2525; the
#                      first free port from there is used)
#   BENCH_POOL         smtp.pool_size and smtp-source sessions (default: 8)
#   BENCH_RTT_MS       if set and not 0, a round-trip time in milliseconds
#                      added to every exchange by bench/delay_proxy.py in
#                      front of smtp-sink, for gazette and smtp-source
#                      alike; the report adds the limit that one round trip
#                      per message allows (pool / RTT) and gazette's ratio
#                      to the lower of that limit and the ceiling
#   BENCH_TLS          none (default) or starttls: gazette's sessions start
#                      in plain text and go into TLS with STARTTLS, as with
#                      a relay on port 587. smtp-sink has no TLS: the script
#                      makes a throwaway self-signed certificate for
#                      127.0.0.1 and localhost with openssl, and
#                      bench/delay_proxy.py --starttls in front of smtp-sink
#                      (with BENCH_RTT_MS's delay, or none) offers STARTTLS
#                      and terminates TLS with it; gazette trusts it through
#                      smtp.ca_file. smtp-source has no STARTTLS: the
#                      ceiling stays plain text, through the plain delay
#                      proxy (or straight to smtp-sink), and the report says
#                      so; the report adds the proxy's CPU during gazette's
#                      send (Python, one core: near 100% of a core, the
#                      proxy is what limits the rate)
#   BENCH_TIMEOUT      limit in seconds for each step (default: 1800)
#   BENCH_MAX_LOAD     if set (e.g. 1.5), wait before measuring until the
#                      1-minute load average is below it ...
#   BENCH_LOAD_WAIT    ... for at most this many seconds (default: 600),
#                      then measure anyway
#   BENCH_LOG_DIR      if set, the configuration, gazette's output and logs
#                      and the raw measurements are copied there at the end
#   BENCH_LEDGER_RUNS  if set (e.g. 30), that many finished runs of the N
#                      subscribers (N ledger rows each, all sent) are put in
#                      the ledger before the measured send, as a ledger
#                      nobody folds holds them
#   BENCH_DKIM         rsa2048, ed25519 or both: sign every message with new
#                      keys (made with openssl, one [[dkim]] section each).
#                      The script then also measures the signing limit,
#                      `openssl speed -seconds 3` signatures/s (for both: one
#                      RSA and one Ed25519 signature per message) times the
#                      runtime threads gazette uses by default
#                      (TOKIO_WORKER_THREADS, or half the CPUs, at least 1),
#                      and prints the goal: 0.8 of the lower of the ceiling
#                      and that limit.
#
# Everything it sends goes to 127.0.0.1. Exit code 0 only if every message
# was sent.

set -euo pipefail

N=${1:-100000}
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [N]   (N: number of subscribers, a positive integer)" >&2
    exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DB=${BENCH_DB:-gazette_bench}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
POOL=${BENCH_POOL:-8}
RTT_MS=${BENCH_RTT_MS:-0}
STEP_TIMEOUT=${BENCH_TIMEOUT:-1800}
ARTICLES=5
export PATH="$PATH:/usr/sbin:/sbin"
export PGOPTIONS="-c client_min_messages=warning"

if ! [[ $RTT_MS =~ ^[0-9]+$ ]]; then
    echo "BENCH_RTT_MS must be a whole number of milliseconds" >&2
    exit 2
fi
TLS_MODE=${BENCH_TLS:-none}
case $TLS_MODE in
none | starttls) ;;
*)
    echo "BENCH_TLS must be none or starttls" >&2
    exit 2
    ;;
esac
if [ "$TLS_MODE" != none ] && ! command -v openssl >/dev/null; then
    echo "BENCH_TLS=$TLS_MODE needs openssl" >&2
    exit 2
fi
DKIM=${BENCH_DKIM:-}
case $DKIM in
"" | rsa2048 | ed25519 | both) ;;
*)
    echo "BENCH_DKIM must be rsa2048, ed25519 or both" >&2
    exit 2
    ;;
esac
if [ -n "$DKIM" ] && ! command -v openssl >/dev/null; then
    echo "BENCH_DKIM needs openssl" >&2
    exit 2
fi

if ! [[ $DB =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "BENCH_DB must be a plain lowercase identifier" >&2
    exit 2
fi

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench: FAILED: %s\n' "$*" >&2
    exit 1
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
now_ns() { date +%s%N; }
# Seconds between two date +%s%N readings, with millisecond precision.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# CPU seconds (user+system, including reaped children) of a process.
cpu_secs() {
    awk -v hz="$(getconf CLK_TCK)" '{
        sub(/^.*\) /, "")            # drop "pid (comm) "; fields shift by 2
        printf "%.2f", ($12 + $13 + $14 + $15) / hz
    }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# CPU seconds of the whole Postgres server: the postmaster, its live
# children and every child it has reaped (backends of closed connections).
# This includes any other activity on the cluster.
pg_cpu_secs() {
    local total=0 pid
    [ -n "${PGMASTER:-}" ] || {
        echo 0
        return
    }
    for pid in "$PGMASTER" $(pgrep -P "$PGMASTER" || true); do
        total=$(awk -v t="$total" -v c="$(cpu_secs "$pid")" 'BEGIN { printf "%.2f", t + c }')
    done
    echo "$total"
}

# -- prerequisites ------------------------------------------------------------

apt_install() {
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null; }
}

command -v timeout >/dev/null || die "timeout (coreutils) is required"
command -v psql >/dev/null || apt_install postgresql-client
[ -x /usr/bin/time ] || apt_install time
if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
    apt_install postfix
    # Only the test programs are needed: do not leave the mail system running.
    if postfix status >/dev/null 2>&1; then
        postfix stop >/dev/null 2>&1 || true
    fi
fi
command -v smtp-sink >/dev/null || die "smtp-sink not found after installing postfix"

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting Postgres"
    for version in $(ls /etc/postgresql); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 1
    done
    pg_isready -q -h 127.0.0.1 -p 5432 || die "Postgres is not reachable on 127.0.0.1:5432"
fi

psql_admin() { timeout "$STEP_TIMEOUT" psql -X -q -v ON_ERROR_STOP=1 "$PG/postgres" "$@"; }
psql_bench() { timeout "$STEP_TIMEOUT" psql -X -q -v ON_ERROR_STOP=1 "$PG/$DB" "$@"; }

if [ -n "${GAZETTE_BIN:-}" ]; then
    BIN=$GAZETTE_BIN
else
    TARGET=${CARGO_TARGET_DIR:-$REPO/target}
    case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
    say "building gazette (release) into $TARGET"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET timeout "$STEP_TIMEOUT" cargo build --release --quiet) ||
        die "cargo build failed"
    BIN=$TARGET/release/gazette
fi
[ -x "$BIN" ] || die "no gazette binary at $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
# What was measured: the commit, "+changes" if what goes into the binary or
# the emails differs from it.
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock build.rs migrations templates 2>/dev/null)" ]; then
    COMMIT="$COMMIT+changes"
fi
if [ -n "${GAZETTE_BIN:-}" ]; then
    BUILT="prebuilt $BIN; repository at $COMMIT"
else
    BUILT="built from $COMMIT"
fi

# -- clean-up -----------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gazette-bench.XXXXXX")
SINK_PID=
POLL_PID=
PROXY_PID=
TLS_PROXY_PID=
FIRST_PID=
cleanup() {
    local rc=$?
    set +e
    for pid in "$PROXY_PID" "$TLS_PROXY_PID" "$FIRST_PID" "$POLL_PID" "$SINK_PID"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    timeout 60 psql -X -q "$PG/postgres" -c "drop database if exists $DB with (force)" >/dev/null 2>&1
    if [ -n "${BENCH_LOG_DIR:-}" ]; then
        mkdir -p "$BENCH_LOG_DIR" && cp -r "$WORK"/. "$BENCH_LOG_DIR"/
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- smtp-sink ----------------------------------------------------------------

port_free() {
    if command -v ss >/dev/null; then
        ! ss -Htln "sport = :$1" | grep -q .
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
PORT=${BENCH_PORT:-2525}
for _ in $(seq 100); do
    port_free "$PORT" && break
    PORT=$((PORT + 1))
done
port_free "$PORT" || die "no free port found from ${BENCH_PORT:-2525}"

# -c: counters (sessions, QUIT, messages) written to the log; -m: at most
# this many simultaneous connections; backlog 1000.
smtp-sink -u nobody -c -h bench-sink -m 64 "127.0.0.1:$PORT" 1000 >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
for _ in $(seq 50); do
    port_free "$PORT" || break
    sleep 0.1
done
kill -0 "$SINK_PID" 2>/dev/null || die "smtp-sink did not start: $(cat "$WORK/sink.log")"
port_free "$PORT" && die "smtp-sink is not listening on 127.0.0.1:$PORT"
# Messages received so far: the last "messages" counter smtp-sink printed.
# The log is a stream of "sess=S quit=Q mesg=M" lines ended by carriage returns.
sink_messages() { tr '\r' '\n' <"$WORK/sink.log" | awk -F'mesg=' 'NF > 1 { m = $2 } END { print m + 0 }'; }

# -- the delay proxy (BENCH_RTT_MS) and the STARTTLS proxy (BENCH_TLS) ---------

# The first free port after $1.
free_port_after() {
    local p=$(($1 + 1))
    for _ in $(seq 100); do
        port_free "$p" && break
        p=$((p + 1))
    done
    port_free "$p" || return 1
    echo "$p"
}
# Starts bench/delay_proxy.py with the arguments given, its output in the
# file named first; waits until it listens.
start_proxy() {
    local log=$1
    shift
    python3 "$REPO/bench/delay_proxy.py" "$@" >"$log" 2>&1 &
    LAST_PROXY_PID=$!
    for _ in $(seq 50); do
        grep -q listening "$log" && break
        sleep 0.1
    done
    grep -q listening "$log" || die "bench/delay_proxy.py $* did not start: $(cat "$log")"
}

# Where smtp-source connects: the sink, or the delay proxy in front of it.
TARGET_PORT=$PORT
if [ "$RTT_MS" -gt 0 ]; then
    TARGET_PORT=$(free_port_after "$PORT") || die "no free port found for the delay proxy"
    start_proxy "$WORK/proxy.log" "$TARGET_PORT" "$PORT" "$RTT_MS"
    PROXY_PID=$LAST_PROXY_PID
fi
# Where gazette connects: the same, or with BENCH_TLS=starttls the proxy
# that offers STARTTLS (with the same delay) in front of the sink.
GAZETTE_PORT=$TARGET_PORT
TLS_CA=
if [ "$TLS_MODE" = starttls ]; then
    TLS_CA=$WORK/tls-cert.pem
    # Self-signed, not a CA (rustls refuses a CA's certificate as the
    # relay's own), for the name gazette connects to: 127.0.0.1.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$WORK/tls-key.pem" -out "$TLS_CA" -days 2 -subj /CN=localhost \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -addext "basicConstraints=critical,CA:FALSE" >"$WORK/openssl-req.log" 2>&1 ||
        die "openssl could not make the TLS certificate: $(cat "$WORK/openssl-req.log")"
    GAZETTE_PORT=$(free_port_after "$TARGET_PORT") || die "no free port found for the STARTTLS proxy"
    start_proxy "$WORK/tls-proxy.log" --starttls "$TLS_CA" "$WORK/tls-key.pem" "$GAZETTE_PORT" "$PORT" "$RTT_MS"
    TLS_PROXY_PID=$LAST_PROXY_PID
fi

# -- database, configuration, data ---------------------------------------------

say "database $DB, smtp-sink on 127.0.0.1:$PORT, work dir $WORK"
[ "$RTT_MS" -eq 0 ] || say "delay proxy on 127.0.0.1:$TARGET_PORT adding $RTT_MS ms per round trip"
[ "$TLS_MODE" = none ] || say "STARTTLS proxy on 127.0.0.1:$GAZETTE_PORT adding $RTT_MS ms per round trip, for gazette"
psql_admin -c "drop database if exists $DB with (force)" -c "create database $DB"

CONFIG=$WORK/bench.toml
cat >"$CONFIG" <<EOF
[database]
url = "$PG/$DB"

[mail]
transport = "smtp"
from = "Gazette Bench <digest@bench.example.org>"

[smtp]
host = "127.0.0.1"
port = $GAZETTE_PORT
tls = "$TLS_MODE"
${TLS_CA:+ca_file = \"$TLS_CA\"}
pool_size = $POOL
timeout_secs = 30
hello_name = "gazette-bench"

[web]
base_url = "https://news.bench.example.org"

[templates]
dir = "$REPO/templates"

[[digests]]
name = "bench"
title = "The Bench Digest"
schedule = "0 7 * * *"
timezone = "UTC"
window = "7d"
max_articles = 10
EOF

# Signing keys, one [[dkim]] section each.
dkim_section() {
    printf '\n[[dkim]]\ndomain = "bench.example.org"\nselector = "%s"\nkey_file = "%s"\n' "$1" "$2" >>"$CONFIG"
}
if [ "$DKIM" = rsa2048 ] || [ "$DKIM" = both ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null ||
        die "openssl could not make an RSA key"
    dkim_section rsa "$WORK/rsa.pem"
fi
if [ "$DKIM" = ed25519 ] || [ "$DKIM" = both ]; then
    openssl genpkey -algorithm ED25519 -out "$WORK/ed25519.pem" 2>/dev/null ||
        die "openssl could not make an Ed25519 key"
    dkim_section ed25519 "$WORK/ed25519.pem"
fi

# gazette reads config/default.toml relative to the working directory: run
# it from the empty work directory so that only the built-in defaults and
# the file above apply.
cd "$WORK"
gz() { timeout "$STEP_TIMEOUT" "$BIN" --config "$CONFIG" "$@"; }

gz migrate >/dev/null 2>"$WORK/migrate.log" || die "gazette migrate: $(cat "$WORK/migrate.log")"

# Five articles published in the last hour, each with a title, an author,
# two tags and a summary of 191 characters: with the templates as they are,
# one email (text and HTML, quoted-printable) is about 11.7 KB.
LOREM="Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris."
for i in $(seq "$ARTICLES"); do
    printf '{"url":"https://bench.example.org/articles/%d","title":"Benchmark article number %d: measuring a digest mailer","summary":"%s","author":"Author %d","tags":["bench","news"],"published_at":"%s"}\n' \
        "$i" "$i" "$LOREM" "$i" "$(date -u -d "-$((i * 5)) minutes" +%Y-%m-%dT%H:%M:%SZ)"
done >"$WORK/articles.ndjson"
gz articles import "$WORK/articles.ndjson" >/dev/null 2>"$WORK/import.log" ||
    die "gazette articles import: $(cat "$WORK/import.log")"

say "seeding $N subscribers"
# Readers' links are signed since migration 8; before it (when comparing
# with an older build) each subscriber had a random token of its own.
if [ -n "$(psql_bench -tAc "select 1 from information_schema.columns
        where table_name = 'subscribers' and column_name = 'legacy_token_hash'")" ]; then
    TOKEN_COLUMN=legacy_token_hash TOKEN_PREFIX="'none:' || "
else
    TOKEN_COLUMN=unsubscribe_token TOKEN_PREFIX=
fi
psql_bench <<EOF
insert into subscribers (email, email_key, name, status, $TOKEN_COLUMN, created_at, updated_at)
select 'user' || g || '@bench.example.org', 'user' || g || '@bench.example.org',
       'Reader ' || g, 'confirmed', ${TOKEN_PREFIX}md5(random()::text) || md5(random()::text), now(), now()
from generate_series(1, $N) as g;
insert into subscriptions (subscriber_id, digest, created_at)
select id, 'bench', now() from subscribers;
analyze;
EOF
[ "$(psql_bench -Atc 'select count(*) from subscriptions')" = "$N" ] || die "seeding did not create $N subscriptions"

LEDGER_RUNS=${BENCH_LEDGER_RUNS:-0}
if [ "$LEDGER_RUNS" -gt 0 ]; then
    say "seeding $LEDGER_RUNS finished runs of $N ledger rows each"
    for r in $(seq "$LEDGER_RUNS"); do
        psql_bench <<EOF
with run as (
    insert into digest_runs (digest, slot, status, window_start, cutoff, created_at, finished_at)
    values ('bench', now() - interval '$r days', 'finished', now() - interval '$((r + 1)) days',
            now() - interval '$r days', now() - interval '$r days', now() - interval '$r days')
    returning id)
insert into deliveries (run_id, subscriber_id, status, attempts, next_attempt_at, sent_at)
select run.id, s.id, 'sent', 1, now() - interval '$r days', now() - interval '$r days'
from run, subscribers s order by s.id;
EOF
    done
    psql_bench -c "vacuum analyze deliveries" >/dev/null
    [ "$(psql_bench -Atc 'select count(*) from deliveries')" = "$((LEDGER_RUNS * N))" ] ||
        die "seeding did not create $((LEDGER_RUNS * N)) ledger rows"
fi

# The size of one real message: the email `send` would deliver to the first subscriber.
gz preview bench --out "$WORK/preview" >/dev/null 2>"$WORK/preview.log" ||
    die "gazette preview: $(cat "$WORK/preview.log")"
SIZE=$(stat -c %s "$WORK/preview/bench.eml")
say "one message is $SIZE bytes"

PGMASTER=$(head -1 "$(psql_admin -Atc 'show data_directory')/postmaster.pid" 2>/dev/null || true)

# The CPU of the backends serving the bench database only: every second,
# the CPU time of each of its backends is written down; a backend's last
# reading counts (so up to a second of work per backend before it exits
# is missed: a lower bound).
poll_backends() {
    while :; do
        for pid in $(psql -X -Atq "$PG/postgres" -c "select pid from pg_stat_activity where datname = '$DB'" 2>/dev/null); do
            printf '%s %s\n' "$pid" "$(cpu_secs "$pid")"
        done
        sleep 1
    done
}
backend_cpu_secs() { awk '$2 > m[$1] { m[$1] = $2 } END { for (p in m) t += m[p]; printf "%.2f", t }' "$1"; }
commits() { psql_admin -Atc "select xact_commit from pg_stat_database where datname = '$DB'"; }

wait_for_low_load() {
    [ -n "${BENCH_MAX_LOAD:-}" ] || return 0
    local waited=0 limit=${BENCH_LOAD_WAIT:-600}
    while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l >= m) }'; do
        if [ "$waited" -ge "$limit" ]; then
            say "load average still $(loadavg) after ${waited}s: measuring anyway"
            return 0
        fi
        say "load average $(loadavg) >= $BENCH_MAX_LOAD: waiting"
        sleep 15
        waited=$((waited + 15))
    done
}

# -- signing limit -------------------------------------------------------------

# Signatures per second on one core, as `openssl speed` measures them (the
# second-to-last field of its result line is sign/s).
openssl_signs() {
    timeout 120 openssl speed -seconds 3 "$1" 2>/dev/null | awk -v pat="$2" '$0 ~ pat { s = $(NF - 1) } END { print s + 0 }'
}
if [ -n "$DKIM" ]; then
    wait_for_low_load
    THREADS=${TOKIO_WORKER_THREADS:-$(($(nproc) / 2))}
    [ "$THREADS" -ge 1 ] || THREADS=1
    LOAD_SPEED=$(loadavg)
    case $DKIM in
    rsa2048)
        RSA_SIGNS=$(openssl_signs rsa2048 '^rsa 2048 bits')
        PER_CORE=$RSA_SIGNS
        SPEED_TEXT="openssl speed rsa2048: $RSA_SIGNS signs/s"
        ;;
    ed25519)
        ED_SIGNS=$(openssl_signs ed25519 'Ed25519')
        PER_CORE=$ED_SIGNS
        SPEED_TEXT="openssl speed ed25519: $ED_SIGNS signs/s"
        ;;
    both)
        RSA_SIGNS=$(openssl_signs rsa2048 '^rsa 2048 bits')
        ED_SIGNS=$(openssl_signs ed25519 'Ed25519')
        PER_CORE=$(awk -v r="$RSA_SIGNS" -v e="$ED_SIGNS" 'BEGIN { printf "%.1f", (r > 0 && e > 0) ? 1 / (1 / r + 1 / e) : 0 }')
        SPEED_TEXT="openssl speed rsa2048: $RSA_SIGNS signs/s, ed25519: $ED_SIGNS signs/s, both: $PER_CORE messages/s"
        ;;
    esac
    awk -v p="$PER_CORE" 'BEGIN { exit !(p > 0) }' || die "could not read the signing speed from openssl speed"
    SIGN_LIMIT=$(awk -v p="$PER_CORE" -v t="$THREADS" 'BEGIN { printf "%.0f", p * t }')
    say "signing limit: $SPEED_TEXT x $THREADS runtime threads = $SIGN_LIMIT messages/s (load average $LOAD_SPEED)"
fi

# -- gazette send -------------------------------------------------------------

wait_for_low_load
LOAD_OURS=$(loadavg)
say "gazette send bench to $N subscribers (load average $LOAD_OURS)"
SINK_BEFORE=$(sink_messages)
SINK_CPU0=$(cpu_secs "$SINK_PID")
TLS_PROXY_CPU0=
[ -z "$TLS_PROXY_PID" ] || TLS_PROXY_CPU0=$(cpu_secs "$TLS_PROXY_PID")
PROXY_CPU0=
[ -z "$PROXY_PID" ] || PROXY_CPU0=$(cpu_secs "$PROXY_PID")
PG_CPU0=$(pg_cpu_secs)
COMMITS0=$(commits)
poll_backends >"$WORK/backends.txt" 2>/dev/null &
POLL_PID=$!
# The time of the first message smtp-sink counts, polled every 10 ms.
watch_first_message() {
    while [ "$(sink_messages)" -le "$SINK_BEFORE" ]; do
        sleep 0.01
    done
    now_ns >"$WORK/first.ns"
}
T0=$(now_ns)
watch_first_message &
FIRST_PID=$!
set +e
# time(1) outside timeout(1), so that a timeout stops gazette itself; the
# figures time reports include timeout's own, which are negligible.
/usr/bin/time -v -o "$WORK/time.txt" timeout "$STEP_TIMEOUT" \
    "$BIN" --config "$CONFIG" send bench >"$WORK/send.out" 2>"$WORK/send.err"
RC=$?
set -e
T1=$(now_ns)
SINK_CPU1=$(cpu_secs "$SINK_PID")
[ -z "$TLS_PROXY_PID" ] || TLS_PROXY_CPU1=$(cpu_secs "$TLS_PROXY_PID")
[ -z "$PROXY_PID" ] || PROXY_CPU1=$(cpu_secs "$PROXY_PID")
PG_CPU1=$(pg_cpu_secs)
kill "$POLL_PID" 2>/dev/null
wait "$POLL_PID" 2>/dev/null || true
POLL_PID=
sleep 1 # let smtp-sink print its last counters, and the backends flush their statistics
SINK_AFTER=$(sink_messages)
COMMITS1=$(commits)
kill "$FIRST_PID" 2>/dev/null || true
wait "$FIRST_PID" 2>/dev/null || true
FIRST_PID=
FIRST_S=
[ -s "$WORK/first.ns" ] && FIRST_S=$(secs "$T0" "$(cat "$WORK/first.ns")")
cat "$WORK/send.out"
if [ "$RC" -ne 0 ]; then
    tail -20 "$WORK/send.err" >&2
    [ -z "$TLS_PROXY_PID" ] || grep -m3 '^TLS failed: ' "$WORK/tls-proxy.log" >&2 || true
    die "gazette send exited with $RC"
fi
grep -Eq "^bench: run [0-9]+: $N sent, 0 failed, 0 skipped$" "$WORK/send.out" ||
    { tail -20 "$WORK/send.err" >&2; die "not every message was sent (expected \"$N sent, 0 failed, 0 skipped\")"; }
[ $((SINK_AFTER - SINK_BEFORE)) -eq "$N" ] ||
    die "smtp-sink counted $((SINK_AFTER - SINK_BEFORE)) messages, expected $N"

WALL=$(secs "$T0" "$T1")
RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
USER_S=$(awk -F': ' '/User time \(seconds\)/ { print $2 }' "$WORK/time.txt")
SYS_S=$(awk -F': ' '/System time \(seconds\)/ { print $2 }' "$WORK/time.txt")
PG_CPU=$(awk -v a="$PG_CPU0" -v b="$PG_CPU1" 'BEGIN { printf "%.2f", b - a }')
PG_DB_CPU=$(backend_cpu_secs "$WORK/backends.txt")
COMMITS=$((COMMITS1 - COMMITS0))
SINK_CPU=$(awk -v a="$SINK_CPU0" -v b="$SINK_CPU1" 'BEGIN { printf "%.2f", b - a }')
# Planning (the run, its article snapshot and N ledger rows) ends with the
# "planned" log line (since chunked planning, sending starts before it).
PLAN_S=$(awk -v t0="$T0" '
    /planned/ && !done {
        ts = $1; gsub(/\x1b\[[0-9;]*m/, "", ts)
        cmd = "date -d " ts " +%s%N"; cmd | getline ns; close(cmd)
        if (ns != "") { printf "%.3f", (ns - t0) / 1e9; done = 1 }
    }' "$WORK/send.err")
RATE=$(awk -v n="$N" -v w="$WALL" 'BEGIN { printf "%.0f", n / w }')
RSS_MB=$(awk -v k="$RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')

# -- ceiling: smtp-source -------------------------------------------------------

LOAD_CEIL=$(loadavg)
say "ceiling: smtp-source, $N messages of $SIZE bytes, $POOL sessions (load average $LOAD_CEIL)"
SINK_BEFORE=$(sink_messages)
SINK_CEIL_CPU0=$(cpu_secs "$SINK_PID")
S0=$(now_ns)
timeout "$STEP_TIMEOUT" /usr/bin/time -f "%U %S" -o "$WORK/source.time" smtp-source -d -s "$POOL" -m "$N" -l "$SIZE" \
    -f bench@bench.example.org -t sink@bench.example.org -M bench-source \
    "127.0.0.1:$TARGET_PORT" >"$WORK/source.log" 2>&1 ||
    die "smtp-source failed: $(tail -5 "$WORK/source.log")"
S1=$(now_ns)
SINK_CEIL_CPU=$(awk -v a="$SINK_CEIL_CPU0" -v b="$(cpu_secs "$SINK_PID")" 'BEGIN { printf "%.2f", b - a }')
SOURCE_CPU=$(awk '{ printf "%.2f", $1 + $2 }' "$WORK/source.time")
sleep 0.5
SINK_AFTER=$(sink_messages)
[ $((SINK_AFTER - SINK_BEFORE)) -eq "$N" ] ||
    die "smtp-sink counted $((SINK_AFTER - SINK_BEFORE)) messages from smtp-source, expected $N"
CEIL_WALL=$(secs "$S0" "$S1")
CEIL_RATE=$(awk -v n="$N" -v w="$CEIL_WALL" 'BEGIN { printf "%.0f", n / w }')
RATIO=$(awk -v a="$N" -v w="$WALL" -v c="$CEIL_WALL" 'BEGIN { printf "%.2f", (a / w) / (a / c) }')
if [ "$RTT_MS" -gt 0 ]; then
    PROXY_CPU=$(cpu_secs "$PROXY_PID")
    # One round trip per message on each of POOL connections.
    LIMIT=$(awk -v p="$POOL" -v r="$RTT_MS" 'BEGIN { printf "%.0f", p * 1000 / r }')
    BOUND=$(awk -v l="$LIMIT" -v c="$CEIL_RATE" 'BEGIN { print (l + 0 < c + 0 ? l : c) }')
    BOUND_RATIO=$(awk -v n="$N" -v w="$WALL" -v b="$BOUND" 'BEGIN { printf "%.2f", (n / w) / b }')
    LIMIT_RATIO=$(awk -v n="$N" -v w="$WALL" -v l="$LIMIT" 'BEGIN { printf "%.2f", (n / w) / l }')
fi

if [ "$TLS_MODE" = starttls ]; then
    SESSION="STARTTLS"
    TLS_PROXY_CPU=$(awk -v a="$TLS_PROXY_CPU0" -v b="$TLS_PROXY_CPU1" 'BEGIN { printf "%.2f", b - a }')
    TLS_PROXY_SHARE=$(awk -v c="$TLS_PROXY_CPU" -v w="$WALL" 'BEGIN { printf "%.0f", 100 * c / w }')
    HANDSHAKES=$(grep -c '^TLS: ' "$WORK/tls-proxy.log" || true)
    RESUMED=$(grep -c '^TLS: .* resumed$' "$WORK/tls-proxy.log" || true)
    TLS_FAILED=$(grep -c '^TLS failed: ' "$WORK/tls-proxy.log" || true)
    TLS_FIRST=$(grep -m1 '^TLS: ' "$WORK/tls-proxy.log" | sed 's/^TLS: //; s/ resumed$//')
else
    SESSION="plain text"
fi

# -- report -------------------------------------------------------------------

DATE=$(date -u +%Y-%m-%d)
cat <<EOF

gazette send, $N subscribers, $ARTICLES articles, pool_size $POOL, message $SIZE bytes, $SESSION ($(nproc) CPUs, $BUILT)
  ledger:   $LEDGER_RUNS earlier runs of $N rows each
  gazette:  $WALL s wall, $RATE messages/s, peak RSS $RSS_MB MB ($RSS_KB kB)
            CPU: gazette ${USER_S} s user + ${SYS_S} s system, smtp-sink $SINK_CPU s,
                 Postgres backends of $DB at least $PG_DB_CPU s (whole server $PG_CPU s)
            Postgres transactions committed in $DB: $COMMITS
            first message received ${FIRST_S:-?} s after start (polled every 10 ms)
            planning (run + $N ledger rows) done ${PLAN_S:-?} s after start
            load average before: $LOAD_OURS
  ceiling:  smtp-source -d -s $POOL -m $N -l $SIZE: $CEIL_WALL s wall, $CEIL_RATE messages/s
            CPU: smtp-source $SOURCE_CPU s, smtp-sink $SINK_CEIL_CPU s
            load average before: $LOAD_CEIL
  ratio:    $RATIO (gazette / ceiling)
EOF
if [ "$TLS_MODE" = starttls ]; then
    cat <<EOF
  tls:      gazette's sessions: STARTTLS (smtp.tls = "starttls") to bench/delay_proxy.py
            --starttls in front of smtp-sink (Python ssl, a throwaway self-signed certificate
            in smtp.ca_file, $RTT_MS ms per round trip): $HANDSHAKES handshakes ($RESUMED resumed,
            $TLS_FAILED failed), ${TLS_FIRST:-none}
            the proxy's CPU during gazette's send: $TLS_PROXY_CPU s in $WALL s ($TLS_PROXY_SHARE% of a core:
            at or near 100%, the proxy is what limits the rate)
            the ceiling is plain text: smtp-source has no STARTTLS
EOF
fi
if [ "$RTT_MS" -gt 0 ]; then
    if [ "$TLS_MODE" = none ]; then
        PROXY_SEND_CPU=$(awk -v a="$PROXY_CPU0" -v b="$PROXY_CPU1" 'BEGIN { printf "%.2f", b - a }')
        PROXY_SHARE=$(awk -v c="$PROXY_SEND_CPU" -v w="$WALL" 'BEGIN { printf "%.0f", 100 * c / w }')
        PROXIED="the proxy's CPU over both: $PROXY_CPU s; during gazette's send: $PROXY_SEND_CPU s in $WALL s, $PROXY_SHARE% of a core"
    else
        PROXIED="gazette's through the STARTTLS proxy, smtp-source's through the plain one, whose CPU was $PROXY_CPU s"
    fi
    cat <<EOF
  latency:  $RTT_MS ms per round trip added by bench/delay_proxy.py to both
            ($PROXIED)
  limit:    $LIMIT messages/s (pool $POOL / RTT $RTT_MS ms: one round trip per message)
  ratio:    $LIMIT_RATIO (gazette / limit)
            $BOUND_RATIO (gazette / min(limit, ceiling) = gazette / $BOUND)
EOF
fi
if [ -n "$DKIM" ]; then
    GOAL=$(awk -v c="$CEIL_RATE" -v l="$SIGN_LIMIT" 'BEGIN { m = (c < l) ? c : l; printf "%.0f", 0.8 * m }')
    MET=$(awk -v r="$RATE" -v g="$GOAL" 'BEGIN { print (r >= g) ? "met" : "NOT met" }')
    cat <<EOF
  dkim:     BENCH_DKIM=$DKIM; $SPEED_TEXT (load average $LOAD_SPEED)
            signing limit: $PER_CORE x $THREADS runtime threads = $SIGN_LIMIT messages/s
            goal: 0.8 x min(ceiling $CEIL_RATE, signing limit $SIGN_LIMIT) = $GOAL messages/s: $MET ($RATE)
EOF
fi
cat <<EOF

| N | messages/s | ceiling messages/s | ratio | peak RSS MB | first message s | planned s | message bytes | load average | date |
|---|---|---|---|---|---|---|---|---|---|
| $N | $RATE | $CEIL_RATE | $RATIO | $RSS_MB | ${FIRST_S:-?} | ${PLAN_S:-?} | $SIZE | $LOAD_OURS | $DATE |
EOF
