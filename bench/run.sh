#!/usr/bin/env bash
# One-run throughput/latency comparison, loopback only (run by `make bench`).
#
# Method: the built-in echo backend (`portcullis echo-backend`) is measured
#   (a) directly, plain HTTP/1.1;
#   (b) through the gateway (`portcullis serve`, threads = WORKERS) over TLS 1.3;
#   (c) through nginx as a TLS 1.3 reverse proxy (worker_processes = WORKERS, same certificate,
#       keep-alive to the upstream, config in bench/nginx.conf.in).
#   (d) through the gateway to an `authenticated` route with a signed-in session cookie (session
#       lookup + upstream JWT injected), alone and beside a wrong-password flood (bench/flood.lua:
#       rotating X-Forwarded-For addresses and usernames, so every attempt costs a full argon2id
#       verification);
#   (e) password sign-ins per second (bench/login.lua: the right password, a new session each);
#   (f) for reference, through nginx to /app/ with the cookie dropped and fixed identity headers of
#       the gateway's sizes added, so that client, proxy and backend carry the same bytes as in (d).
# Load: wrk -t THREADS -c CONNECTIONS -d DURATION --latency, HTTP/1.1 keep-alive, GET /, after
# an unrecorded warm-up of WARMUP. Besides rps and latency, each row gives the server's own CPU
# time per request (from /proc, over the recorded run). Every process runs on this machine and shares its cores with
# wrk, so numbers compare the proxies with each other, not with production hardware.
#
# Host names: TLS targets are requested as https://acme.localhost:PORT/ so that SNI and Host
# are acme.localhost, while bench/loopback.lua makes wrk connect to 127.0.0.1 (wrk resolves
# with getaddrinfo, which does not map *.localhost; /etc/hosts is never edited). curl checks
# use --resolve for the same effect.
#
# Rounds: targets (a)-(d) and (f) run in ROUNDS interleaved rounds (each round runs each of them
# once, one after another, each round starting one target later, so with 5 rounds each target
# runs once in every position, twice with the default 10), and each figure is the median of its
# rounds. This VM's speed drifts by a quarter within a minute; one run per target compared
# whichever target ran through a slow spell. The notes give every round's ratio, and the target
# line gives a 90% bootstrap interval for its rps ratio: with single rounds ranging 0.76-1.25x,
# the median of 5 rounds still moved by about 6%, more than the margins being judged.
#
# Settings (environment): DURATION=5s ROUNDS=10 WARMUP=2s (0 = none) THREADS=2 CONNECTIONS=64 WORKERS=2
#   READY_TIMEOUT=30 (seconds) PORTCULLIS_BIN=<path> (default target/release/portcullis)
#   PORTCULLIS_GATEWAY_BIN=<path> (the build that runs `serve`; default PORTCULLIS_BIN; `make
#   bench` gives its profile-guided build, scripts/pgo-build.sh, while the echo backend and the
#   other commands stay on PORTCULLIS_BIN)
#   KEEP_TMP=1 keeps the temp dir (configs, logs, raw wrk output).
#
# Adding a scenario: a `measure KEY URL [extra wrk args...]` line in main()'s rounds and an
# `emit_row KEY LABEL` after them, or, for a single run, `bench_target LABEL URL [args...]`,
# e.g. `bench_target "portcullis, authenticated" "https://acme.localhost:$GW_PORT/app/" -H "Cookie: ..."`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
BIN=${PORTCULLIS_BIN:-$target_dir/release/portcullis}
GW_BIN=${PORTCULLIS_GATEWAY_BIN:-$BIN}

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-2}
READY_TIMEOUT=${READY_TIMEOUT:-30}
KEEP_TMP=${KEEP_TMP:-0}
HOST=acme.localhost

die() {
    echo "error: $*" >&2
    exit 1
}

# --- processes: everything started goes through start_bg and is stopped on exit -------------
PIDS=()
TMP=""

stop_all() {
    local pid alive i sig tries
    [ "${#PIDS[@]}" -eq 0 ] && return 0
    # Background jobs of a script ignore SIGINT unless they install a handler (tokio does, and
    # for pingora SIGINT is the fast shutdown), so: INT, then TERM, then KILL.
    for sig in INT TERM KILL; do
        # Up to 2 s for the fast path (SIGINT), 5 s for SIGTERM.
        tries=50
        [ "$sig" = INT ] && tries=20
        alive=()
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ "${#alive[@]}" -eq 0 ] && break
        kill "-$sig" "${alive[@]}" 2>/dev/null || true
        for ((i = 0; i < tries; i++)); do
            alive=()
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
            [ "${#alive[@]}" -eq 0 ] && break
            sleep 0.1
        done
    done
    wait "${PIDS[@]}" 2>/dev/null || true
    PIDS=()
}

cleanup() {
    stop_all
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$KEEP_TMP" = 1 ]; then
            echo "bench: kept $TMP" >&2
        else
            rm -rf "$TMP"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD... — run CMD in the background, output to $TMP/NAME.log; sets LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_ready NAME PID URL — poll URL (curl, TLS names pinned to 127.0.0.1) until it answers 200
# with the echo backend's JSON; fail with the process log if it dies or READY_TIMEOUT passes.
wait_ready() {
    local name=$1 pid=$2 url=$3 deadline code="none"
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$TMP/$name.log" >&2 || true
            die "$name exited during startup (log above)"
        fi
        code=$(curl -s -o "$TMP/ready.body" -w '%{http_code}' --max-time 2 \
            --cacert "$TMP/certs/ca.crt" --resolve "$HOST:$(url_port "$url"):127.0.0.1" \
            "$url" 2>/dev/null) || code="no answer"
        if [ "$code" = 200 ]; then
            grep -q '"method"' "$TMP/ready.body" && return 0
            die "$name answered $url but not with the echo backend's JSON: $(head -c 200 "$TMP/ready.body")"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$TMP/$name.log" >&2 || true
            die "$name not ready at $url after ${READY_TIMEOUT}s (last status: $code; log above)"
        fi
        sleep 0.2
    done
}

url_port() {
    local hostport=${1#*://}
    hostport=${hostport%%/*}
    echo "${hostport##*:}"
}

# Distinct free loopback ports, all held open together while chosen.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()' "$1"
}

# run_bounded SECONDS CMD... — run CMD with a hard time limit. It runs as a tracked background
# job and the script `wait`s for it, so a TERM/INT to the script is handled at once (bash defers
# traps while a foreground child runs) and cleanup stops it.
run_bounded() {
    local limit=$1 pid rc=0
    shift
    timeout -k 5 "$limit" "$@" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    return "$rc"
}

# wrk durations: plain seconds or with s/m/h.
seconds_of() {
    case "$1" in
        *h) echo $((${1%h} * 3600)) ;;
        *m) echo $((${1%m} * 60)) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}

# --- measurement ----------------------------------------------------------------------------
ROWS=()
NOTES=()
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# proc_ticks PID... — user + system CPU ticks (all threads) of these processes and of their
# direct children (nginx's workers). Fields are read after the `)` that closes the command
# name, which may itself hold spaces. A process that ends between the glob and its read makes
# cat fail, which under pipefail would end the whole run without a word: that is not an error.
proc_ticks() {
    [ "$#" -eq 0 ] && { echo 0; return; }
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v want=" $* " '
        {
            pid = $1
            rest = $0
            sub(/^.*\) /, "", rest)
            split(rest, f, " ")
            # f[1] state, f[2] ppid, f[12] utime, f[13] stime
            if (index(want, " " pid " ") || index(want, " " f[2] " ")) ticks += f[12] + f[13]
        }
        END { printf "%d\n", ticks }'
}

# Tallies per target key, over its rounds: rps, p50 and p99 (space-separated, one per round),
# requests and CPU ticks (summed), non-2xx counts and socket errors (for the notes).
declare -A T_RPS T_P50 T_P99 T_TOTAL T_TICKS T_CPU T_NON2XX T_ERRS
RUNS=0

# measure KEY URL [extra wrk args...] — one recorded wrk run against URL, added to KEY's tally;
# with WARM=1 (environment) an unrecorded warm-up of WARMUP goes first.
# CPU_OF (environment, optional): the PIDs of the server under test, whose CPU time per request
# over the recorded runs goes in the row.
measure() {
    local key=$1 url=$2
    shift 2
    local out limit
    RUNS=$((RUNS + 1))
    out="$TMP/wrk-$RUNS-$key.txt"
    local wrk_cmd=(wrk -t"$THREADS" -c"$CONNECTIONS" --timeout 5s -s "$BENCH_DIR/loopback.lua" "$@")
    if [ "${WARM:-1}" = 1 ] && [ "$WARMUP" != 0 ]; then
        limit=$(($(seconds_of "$WARMUP") + 30))
        run_bounded "$limit" "${wrk_cmd[@]}" -d"$WARMUP" "$url" >/dev/null 2>&1 ||
            die "wrk warm-up against $key ($url) failed"
    fi
    echo "bench: $key — wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url" >&2
    limit=$(($(seconds_of "$DURATION") + 30))
    local ticks_before ticks_after
    # shellcheck disable=SC2086 # CPU_OF is a list of PIDs
    ticks_before=$(proc_ticks ${CPU_OF:-})
    run_bounded "$limit" "${wrk_cmd[@]}" -d"$DURATION" --latency "$url" >"$out" 2>&1 || {
        cat "$out" >&2
        die "wrk against $key ($url) failed"
    }
    # shellcheck disable=SC2086
    ticks_after=$(proc_ticks ${CPU_OF:-})
    local parsed
    parsed=$(awk '
        function ms(v,  n) {
            n = v + 0
            if (v ~ /us$/) return n / 1000
            if (v ~ /ms$/) return n
            if (v ~ /[0-9]m$/) return n * 60000
            if (v ~ /s$/) return n * 1000
            return n
        }
        /^Requests\/sec:/ { rps = $2 }
        /^[ \t]+50%/ { p50 = ms($2) }
        /^[ \t]+99%/ { p99 = ms($2) }
        /requests in/ { total = $1 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { sub(/^[ \t]*Socket errors: /, ""); errs = $0 }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%d|%.2f|%.2f|%s|%s|%s\n", rps + 0.5, p50, p99, total, non2xx, errs
        }' "$out") || {
        cat "$out" >&2
        die "could not parse wrk output for $key"
    }
    local rps p50 p99 total non2xx errs
    IFS='|' read -r rps p50 p99 total non2xx errs <<<"$parsed"
    T_RPS[$key]="${T_RPS[$key]:-} $rps"
    T_P50[$key]="${T_P50[$key]:-} $p50"
    T_P99[$key]="${T_P99[$key]:-} $p99"
    T_TOTAL[$key]=$((${T_TOTAL[$key]:-0} + ${total:-0}))
    T_TICKS[$key]=$((${T_TICKS[$key]:-0} + ticks_after - ticks_before))
    [ -n "${CPU_OF:-}" ] && T_CPU[$key]=1
    if [ -n "$non2xx" ]; then T_NON2XX[$key]=$((${T_NON2XX[$key]:-0} + non2xx)); fi
    if [ -n "$errs" ]; then T_ERRS[$key]="${T_ERRS[$key]:-}${T_ERRS[$key]:+; }$errs"; fi
}

# The median of numbers given as one space-separated list (the lower middle of an even count).
median() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# emit_row KEY LABEL — KEY's table row: medians of rps, p50 and p99 over its rounds; CPU per
# request over all of them.
emit_row() {
    local key=$1 label=$2 cpu="-" total=${T_TOTAL[$1]:-0}
    if [ -n "${T_CPU[$key]:-}" ] && [ "$total" -gt 0 ]; then
        cpu=$(awk -v t="${T_TICKS[$key]}" -v hz="$CLK_TCK" -v n="$total" \
            'BEGIN { printf "%.1f µs", t * 1000000 / hz / n }')
    fi
    ROWS+=("| $label | $(median "${T_RPS[$key]}") | $(median "${T_P50[$key]}") ms | $(median "${T_P99[$key]}") ms | $cpu |")
    if [ -n "${T_NON2XX[$key]:-}" ]; then NOTES+=("$label: ${T_NON2XX[$key]} of $total responses were not 2xx/3xx"); fi
    if [ -n "${T_ERRS[$key]:-}" ]; then NOTES+=("$label: socket errors: ${T_ERRS[$key]}"); fi
}

# bench_target LABEL URL [extra wrk args...] — a single-round row (warm-up, one recorded run).
bench_target() {
    local label=$1 url=$2 key="single${#ROWS[@]}"
    shift 2
    WARM=1 measure "$key" "$url" "$@"
    emit_row "$key" "$label"
}

# ratio_note A B TEXT — per-round rps ratios of A to B (the same round runs both, moments apart).
ratio_note() {
    local a b i out=""
    read -r -a a <<<"${T_RPS[$1]}"
    read -r -a b <<<"${T_RPS[$2]}"
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        out+="${out:+, }$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { printf "%.2f×", x / y }')"
    done
    NOTES+=("$3 per round: $out")
}

# verdict VALUE OP LIMIT — "met" when VALUE OP LIMIT holds (OP is >= or <=), else "NOT met".
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = op == ">=" ? v >= t : v <= t; print (ok ? "met" : "NOT met") }'
}

# target_note A B LABEL — issue 3's targets for A against B, from the same medians as the table: rps
# at least 1.0x B's, p99 at most 1.2x B's. Also how many rounds alone reached the rps target,
# since on a shared VM one run's median can fall either side of a small margin.
target_note() {
    local rps p99 a b i met=0
    # No ratio without both rows (a target that failed to run has been reported already).
    if [ -z "${T_RPS[$1]:-}" ] || [ -z "${T_RPS[$2]:-}" ]; then return 0; fi
    # Unrounded, so that a ratio printed as 1.00× but below 1 is not called met.
    rps=$(awk -v x="$(median "${T_RPS[$1]}")" -v y="$(median "${T_RPS[$2]}")" 'BEGIN { printf "%.6f", x / y }')
    p99=$(awk -v x="$(median "${T_P99[$1]}")" -v y="$(median "${T_P99[$2]}")" 'BEGIN { printf "%.6f", x / y }')
    read -r -a a <<<"${T_RPS[$1]}"
    read -r -a b <<<"${T_RPS[$2]}"
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { exit !(x >= y) }' && met=$((met + 1))
    done
    NOTES+=("target ($3): rps $(printf '%.3f' "$rps")× (at least 1.00×: $(verdict "$rps" ">=" 1)), p99 $(printf '%.3f' "$p99")× (at most 1.20×: $(verdict "$p99" "<=" 1.2)); rps at least nginx's in $met of ${#a[@]} rounds")
    NOTES+=("$(ratio_interval "${T_RPS[$1]}" "${T_RPS[$2]}")")
}

# ratio_interval "A rps per round" "B rps per round" — a 90% bootstrap interval for the ratio of
# the medians: rounds are drawn with replacement (A and B of a round together, as they ran
# moments apart), 4000 times, with a fixed seed so the same rounds give the same interval. It
# says whether the verdict above is beyond this machine's noise or within it.
ratio_interval() {
    python3 - "$1" "$2" <<'PY'
import random, sys
from statistics import median_low  # the lower middle, as median() above
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
n = min(len(a), len(b))
if n < 3:
    print("rps ratio interval: needs at least 3 rounds")
    sys.exit(0)
rng = random.Random(20261206)
ratios = []
for _ in range(4000):
    pick = [rng.randrange(n) for _ in range(n)]
    ratios.append(median_low([a[i] for i in pick]) / median_low([b[i] for i in pick]))
ratios.sort()
lo, hi = ratios[int(0.05 * len(ratios))], ratios[int(0.95 * len(ratios)) - 1]
where = "above 1.00x: beyond this run's noise" if lo >= 1 else (
    "below 1.00x: beyond this run's noise" if hi < 1 else "it spans 1.00x: within this run's noise")
print(f"rps ratio, 90% bootstrap interval over the {n} rounds: {lo:.3f}x to {hi:.3f}x ({where})")
PY
}

print_report() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo
    local gateway_note=""
    [ "$GW_BIN" = "$BIN" ] || gateway_note=", gateway at $GW_BIN"
    echo "Machine: $(nproc) CPUs${cpu:+ ($cpu)}, $(uname -sr)"
    echo "Tools: $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk", $2}'), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), portcullis at $BIN$gateway_note"
    echo "Method: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, HTTP/1.1 keep-alive; the first five rows are $ROUNDS interleaved"
    echo "        rounds (every target once per round, ${WARMUP} warm-up in the first), each figure the median of its rounds;"
    echo "        TLS 1.3 with the same certificate; $WORKERS gateway threads / $WORKERS nginx workers; loopback only."
    echo
    echo "| target | rps | p50 | p99 | server CPU / request |"
    echo "|---|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "server CPU / request: user + system time of the server under test (echo backend, gateway,"
    echo "or nginx master + workers) over the recorded runs, divided by the requests wrk completed."
    echo "Everything shares the CPUs with wrk, so this, not rps alone, compares how much work each"
    echo "proxy spends on a request."
    if [ "${#NOTES[@]}" -gt 0 ]; then
        echo
        printf 'note: %s\n' "${NOTES[@]}"
    fi
}

# --- the systems under test -----------------------------------------------------------------
preflight() {
    local cmd
    for cmd in wrk curl python3 timeout; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found; run \`make bench\` (it installs the bench tools) or scripts/install-deps.sh --bench"
    done
    NGINX=$(command -v nginx 2>/dev/null || true)
    [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
    [ -n "$NGINX" ] || die "nginx not found; run \`make bench\` or scripts/install-deps.sh --bench"
    [ -x "$BIN" ] || die "$BIN not found; build it with \`cargo build --release\` (or \`make bench\`), or set PORTCULLIS_BIN"
    [ -x "$GW_BIN" ] || die "$GW_BIN (PORTCULLIS_GATEWAY_BIN) not found"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
    read -r ECHO_PORT GW_PORT ADMIN_PORT NGINX_PORT <<<"$(free_ports 4)"
}

make_certs() {
    "$BIN" dev-certs --out "$TMP/certs" >"$TMP/dev-certs.log" 2>&1 || {
        cat "$TMP/dev-certs.log" >&2
        die "portcullis dev-certs failed"
    }
    [ -f "$TMP/certs/$HOST.crt" ] || die "dev-certs did not write $TMP/certs/$HOST.crt"
}

start_echo() {
    start_bg echo "$BIN" echo-backend --listen "127.0.0.1:$ECHO_PORT"
    ECHO_PID=$LAST_PID
    wait_ready echo "$LAST_PID" "http://127.0.0.1:$ECHO_PORT/"
}

# Gateway config and the single policy (formats: README / `portcullis check`).
write_gateway_config() {
    local dir="$TMP/gateway"
    mkdir -p "$dir/policies" "$dir/data"
    cat >"$dir/portcullis.toml" <<EOF
[server]
https_listen = "127.0.0.1:$GW_PORT"
threads = $WORKERS
policies_dir = "policies"
data_dir = "data"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[[tls.certificates]]
hosts = ["$HOST"]
cert = "$TMP/certs/$HOST.crt"
key = "$TMP/certs/$HOST.key"

[proxy]
# The flood scenario names its many clients in X-Forwarded-For.
trusted_proxies = ["127.0.0.1/32"]

[ratelimit]
# The sign-in scenario repeats one user's correct password from one address as fast as it
# can; a real deployment keeps the default per-IP budget.
login_ip_burst = 1000000
login_ip_refill_secs = 1
EOF
    cat >"$dir/policies/acme.toml" <<EOF
id = "acme"
display_name = "Acme Corp (benchmark)"
hosts = ["$HOST"]

[[routes]]
id = "public"
prefix = "/"
upstream = "http://127.0.0.1:$ECHO_PORT"
access = "public"

[[routes]]
id = "app"
prefix = "/app"
upstream = "http://127.0.0.1:$ECHO_PORT"
access = "authenticated"
EOF
}

# A user and a signed-in session for the authenticated scenarios.
sign_in() {
    printf '%s\n' "bench-user-passphrase-1" |
        "$BIN" user add --config "$TMP/gateway/portcullis.toml" --tenant acme bench --password-stdin >"$TMP/user.log" 2>&1 || {
        cat "$TMP/user.log" >&2
        die "portcullis user add failed"
    }
    SESSION_COOKIE=$(curl -sS --cacert "$TMP/certs/ca.crt" --resolve "$HOST:$GW_PORT:127.0.0.1" \
        -H 'Content-Type: application/json' -o /dev/null -D - \
        -d '{"username":"bench","password":"bench-user-passphrase-1"}' \
        "https://$HOST:$GW_PORT/.auth/login" | sed -n 's/^set-cookie: \(__Host-portcullis=[^;]*\).*/\1/ip' | head -n 1)
    [ -n "$SESSION_COOKIE" ] || die "could not sign in the benchmark user"
    local echoed jwt
    echoed=$(curl -sS --cacert "$TMP/certs/ca.crt" --resolve "$HOST:$GW_PORT:127.0.0.1" -H "Cookie: $SESSION_COOKIE" \
        "https://$HOST:$GW_PORT/app/")
    jwt=$(printf '%s' "$echoed" | sed -n 's/.*\["x-portcullis-jwt","\([^"]*\)"\].*/\1/p')
    [ -n "$jwt" ] || die "the signed-in request did not carry an upstream JWT"
    # Only lengths leave this function: the reference row sends stand-ins of the same sizes.
    JWT_LEN=${#jwt}
    local name=${SESSION_COOKIE%%=*} value=${SESSION_COOKIE#*=}
    DUMMY_COOKIE="$name=$(head -c "${#value}" /dev/zero | tr '\0' x)"
}

# Measure a target while a wrong-password flood runs beside it.
bench_under_flood() {
    local label=$1 url=$2
    shift 2
    local limit run_for
    run_for=$(($(seconds_of "$DURATION") + $(seconds_of "$WARMUP") + 5))
    limit=$((run_for + 40))
    run_bounded "$limit" wrk -t1 -c16 --timeout 5s -s "$BENCH_DIR/flood.lua" \
        -d"${run_for}s" "https://$HOST:$GW_PORT/" >"$TMP/flood.txt" 2>&1 &
    local flood=$!
    sleep 1
    bench_target "$label" "$url" "$@"
    wait "$flood" || true
    local flood_rps
    flood_rps=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$TMP/flood.txt")
    NOTES+=("flood beside '$label': ${flood_rps:-?} wrong-password sign-ins/s from rotating addresses and usernames")
}

# Password sign-ins per second at the argon2id parameters (right password, new session each).
bench_login() {
    local saved=$CONNECTIONS
    CONNECTIONS=4
    bench_target "portcullis, password sign-ins (POST /.auth/login)" "https://$HOST:$GW_PORT/.auth/login" -s "$BENCH_DIR/login.lua"
    CONNECTIONS=$saved
}

start_gateway() {
    write_gateway_config
    "$BIN" keygen --config "$TMP/gateway/portcullis.toml" >"$TMP/keygen.log" 2>&1 || {
        cat "$TMP/keygen.log" >&2
        die "portcullis keygen failed for the generated benchmark config"
    }
    "$BIN" check --config "$TMP/gateway/portcullis.toml" >"$TMP/check.log" 2>&1 || {
        cat "$TMP/check.log" >&2
        die "portcullis check rejected the generated benchmark config"
    }
    # Log warnings only, like nginx's error_log above.
    start_bg gateway env PORTCULLIS_LOG="${PORTCULLIS_LOG:-warn}" "$GW_BIN" serve --config "$TMP/gateway/portcullis.toml"
    GW_PID=$LAST_PID
    wait_ready gateway "$LAST_PID" "https://$HOST:$GW_PORT/"
}

start_nginx() {
    local user_line="# not root: workers run as the current user"
    if [ "$(id -u)" -eq 0 ]; then user_line="user $(id -un) $(id -gn);"; fi
    mkdir -p "$TMP/nginx-temp"
    sed -e "s|@USER_LINE@|$user_line|" \
        -e "s|@WORKERS@|$WORKERS|" \
        -e "s|@TMP@|$TMP|g" \
        -e "s|@CERTS@|$TMP/certs|g" \
        -e "s|@ECHO_PORT@|$ECHO_PORT|g" \
        -e "s|@PORT@|$NGINX_PORT|g" \
        -e "s|@JWT_SIZED@|$(head -c "$JWT_LEN" /dev/zero | tr '\0' x)|" \
        "$BENCH_DIR/nginx.conf.in" >"$TMP/nginx.conf"
    # -e: log startup errors here too, not to /var/log/nginx (nginx >= 1.19.5).
    local nginx_args=(-p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log")
    "$NGINX" -t -q "${nginx_args[@]}" >"$TMP/nginx-test.log" 2>&1 || {
        cat "$TMP/nginx-test.log" >&2
        die "nginx rejected the generated config $TMP/nginx.conf"
    }
    start_bg nginx "$NGINX" "${nginx_args[@]}"
    NGINX_PID=$LAST_PID
    wait_ready nginx "$LAST_PID" "https://$HOST:$NGINX_PORT/"
}

# measure_target KEY — one recorded run of one of the interleaved targets.
measure_target() {
    case $1 in
        direct) CPU_OF=$ECHO_PID measure direct "http://127.0.0.1:$ECHO_PORT/" ;;
        gateway) CPU_OF=$GW_PID measure gateway "https://$HOST:$GW_PORT/" ;;
        nginx) CPU_OF=$NGINX_PID measure nginx "https://$HOST:$NGINX_PORT/" ;;
        signed_in) CPU_OF=$GW_PID measure signed_in "https://$HOST:$GW_PORT/app/" -H "Cookie: $SESSION_COOKIE" ;;
        nginx_same_bytes) CPU_OF=$NGINX_PID measure nginx_same_bytes "https://$HOST:$NGINX_PORT/app/" -H "Cookie: $DUMMY_COOKIE" ;;
        *) die "unknown target $1" ;;
    esac
}

main() {
    preflight
    make_certs
    start_echo
    start_gateway
    # Before nginx: its reference location is sized after the gateway's JWT.
    sign_in
    start_nginx

    # Interleaved rounds: each round runs every target once, so a slow spell of the machine
    # hits all of them rather than whichever ran during it.
    local round nginx_label
    nginx_label="nginx $("$NGINX" -v 2>&1 | sed -n 's|.*nginx/||p') (TLS 1.3)"
    local targets=(direct gateway nginx signed_in nginx_same_bytes) i
    for ((round = 1; round <= ROUNDS; round++)); do
        export WARM=$((round == 1 ? 1 : 0))
        # Each round starts one target later, so no target always runs first or last.
        for ((i = 0; i < ${#targets[@]}; i++)); do
            measure_target "${targets[$(((i + round - 1) % ${#targets[@]}))]}"
        done
    done
    unset WARM
    emit_row direct "backend direct (HTTP)"
    emit_row gateway "portcullis (TLS 1.3)"
    emit_row nginx "$nginx_label"
    emit_row signed_in "portcullis, signed in /app/ (session + JWT injected)"
    emit_row nginx_same_bytes "nginx, /app/ carrying the same bytes (reference: cookie dropped, fixed identity headers of the same sizes)"
    ratio_note gateway nginx "portcullis / nginx rps"
    ratio_note signed_in nginx "signed-in portcullis / nginx rps"
    target_note signed_in nginx "signed-in vs nginx plain"
    # The gateway's CPU here includes the flood's password hashing.
    bench_under_flood "portcullis, signed in /app/, during a wrong-password flood" "https://$HOST:$GW_PORT/app/" -H "Cookie: $SESSION_COOKIE"
    CPU_OF=$GW_PID bench_login

    stop_all
    print_report
}

# --self-test: check the statistics helpers on fixed inputs (`make test` runs it; no servers).
self_test() {
    local got fails=0
    check() {
        if [ "$2" != "$3" ]; then
            echo "bench self-test: $1: expected '$3', got '$2'" >&2
            fails=$((fails + 1))
        fi
    }
    check "median, odd count" "$(median "5 1 4 2 3")" 3
    check "median, even count (lower middle)" "$(median "40 10 30 20")" 20
    check "verdict at the line" "$(verdict 1.000000 ">=" 1)" met
    check "verdict below the line" "$(verdict 0.999999 ">=" 1)" "NOT met"
    check "verdict p99" "$(verdict 1.21 "<=" 1.2)" "NOT met"
    got=$(ratio_interval "110 115 118 120 111" "100 100 100 100 100")
    check "interval, clearly above" "$got" \
        "rps ratio, 90% bootstrap interval over the 5 rounds: 1.100x to 1.200x (above 1.00x: beyond this run's noise)"
    got=$(ratio_interval "90 85 88 92 80" "100 100 100 100 100")
    check "interval, clearly below" "${got##*(}" "below 1.00x: beyond this run's noise)"
    got=$(ratio_interval "110 105 98 120 101 99 125 113 90 80" "100 100 100 100 100 100 100 100 100 100")
    check "interval, noisy" "${got##*(}" "it spans 1.00x: within this run's noise)"
    check "interval, too few rounds" "$(ratio_interval "1 2" "1 2")" "rps ratio interval: needs at least 3 rounds"
    [ "$fails" -eq 0 ] || die "bench self-test: $fails check(s) failed"
    echo "bench self-test: ok"
}

if [ "${1:-}" = "--self-test" ]; then
    self_test
else
    main "$@"
fi
