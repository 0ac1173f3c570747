#!/usr/bin/env bash
# Start a single-machine Ray head for `ray job submit`, reachable from this machine only, with token
# authentication on. Stop it with cluster/stop_local_head.sh (never plain `ray stop`, which kills every
# Ray on the machine, including other people's and other tests').
#
# Usage:
#   cluster/start_local_head.sh [options] [-- extra `ray start` arguments]
#
# Options (each has an environment-variable twin; the option wins):
#   --temp-dir DIR        Ray temp/session dir of this head      DISTRACER_RAY_TEMP_DIR  (/tmp/distracer-ray-$UID)
#   --port N              GCS port                               DISTRACER_RAY_PORT      (6379)
#   --dashboard-port N    dashboard / Jobs API port              DISTRACER_RAY_DASHBOARD_PORT (8265)
#   --client-port N       Ray Client server port                 DISTRACER_RAY_CLIENT_PORT (auto)
#   --agent-port N        dashboard agent HTTP port              DISTRACER_RAY_AGENT_PORT (auto)
#   --free-ports          pick free ports for all four above (for tests, or a second head on one machine)
#                         A port given as "auto" is picked free too. The client and agent ports default
#                         to auto: any ray.init() on the machine takes Ray's fixed defaults for them.
#   --token-file FILE     token file, created (mode 600) if absent  DISTRACER_RAY_TOKEN_FILE (~/.ray/auth_token)
#   --num-cpus N / --num-gpus N / --object-store-memory BYTES   passed to `ray start`
#   --timeout S           seconds to wait for the Jobs API        DISTRACER_RAY_START_TIMEOUT (90)
#
# Output: `ray start`'s own log goes to stderr and to DIR/start.log; stdout carries only KEY=VALUE lines
# (also written to DIR/head.env), so a test or a shell can read them:
#   set -a; eval "$(cluster/start_local_head.sh)"; set +a     # exports RAY_ADDRESS, RAY_AUTH_MODE, ...
#   ray job submit --runtime-env cluster/runtime_env.yaml -- \
#       distracer train --config tune_configs/laptop.yaml --set run_dir=$PWD/runs/job-laptop
# (tune_configs/cluster.yaml wants 32 CPUs and a GPU; run_dir absolute because a job starts in its own
# copy of the working dir under DIR. More in docs/CLUSTER.md.)
# Exit status: 0 when the head is up and its Jobs API answers 200 with the token and 401 without it;
# non-zero with a one-line `start_local_head: error: ...` on stderr otherwise (a half-started head is
# stopped again before exiting).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG=start_local_head

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
log() { echo "$PROG: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; }

TEMP_DIR="${DISTRACER_RAY_TEMP_DIR:-${TMPDIR:-/tmp}/distracer-ray-$(id -u)}"
PORT="${DISTRACER_RAY_PORT:-6379}"
DASHBOARD_PORT="${DISTRACER_RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${DISTRACER_RAY_CLIENT_PORT:-auto}"
AGENT_PORT="${DISTRACER_RAY_AGENT_PORT:-auto}"
TOKEN_FILE="${DISTRACER_RAY_TOKEN_FILE:-$HOME/.ray/auth_token}"
TIMEOUT="${DISTRACER_RAY_START_TIMEOUT:-90}"
FREE_PORTS=0
RAY_ARGS=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --temp-dir) TEMP_DIR="${2:?--temp-dir needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="${2:?--dashboard-port needs a value}"; shift 2 ;;
        --client-port) CLIENT_PORT="${2:?--client-port needs a value}"; shift 2 ;;
        --agent-port) AGENT_PORT="${2:?--agent-port needs a value}"; shift 2 ;;
        --free-ports) FREE_PORTS=1; shift ;;
        --token-file) TOKEN_FILE="${2:?--token-file needs a value}"; shift 2 ;;
        --num-cpus) RAY_ARGS+=("--num-cpus=${2:?--num-cpus needs a value}"); shift 2 ;;
        --num-gpus) RAY_ARGS+=("--num-gpus=${2:?--num-gpus needs a value}"); shift 2 ;;
        --object-store-memory)
            RAY_ARGS+=("--object-store-memory=${2:?--object-store-memory needs a value}"); shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; RAY_ARGS+=("$@"); break ;;
        *) usage; die "unknown argument '$1' (extra 'ray start' arguments go after --)" ;;
    esac
done

# --- tools ------------------------------------------------------------------------------------------
RAY_BIN="${RAY:-$(command -v ray || true)}"
[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || die "'ray' not found on PATH (activate the venv: . .venv/bin/activate, or set RAY=/path/to/ray)"
RAY_BIN_DIR="$(cd "$(dirname "$RAY_BIN")" && pwd)"
# The interpreter that has Ray installed, for the port and HTTP checks below.
if [[ -x "$RAY_BIN_DIR/python" ]]; then PY="$RAY_BIN_DIR/python"; else PY="$(command -v python3 || true)"; fi
[[ -n "$PY" ]] || die "no python next to $RAY_BIN and no python3 on PATH"
command -v setsid >/dev/null || die "'setsid' (util-linux) is needed to give this head its own process session"

# --- paths ------------------------------------------------------------------------------------------
[[ "$TEMP_DIR" != *[[:space:]]* ]] || die "--temp-dir must not contain whitespace: '$TEMP_DIR'"
[[ "$TOKEN_FILE" != *[[:space:]]* ]] || die "--token-file must not contain whitespace: '$TOKEN_FILE'"
mkdir -p "$TEMP_DIR" || die "cannot create temp dir $TEMP_DIR"
TEMP_DIR="$(cd "$TEMP_DIR" && pwd -P)"
# Ray puts Unix sockets at DIR/session_<date>_<pid>/sockets/plasma_store (~64 more characters) and a
# socket path may not exceed 107 bytes; fail here with a clear message rather than deep inside Ray.
if (( ${#TEMP_DIR} > 40 )); then
    die "temp dir '$TEMP_DIR' is ${#TEMP_DIR} characters; Ray's socket paths need it <= 40 (try: --temp-dir \$(mktemp -d /tmp/drh.XXXXXX))"
fi
# Marks the directory as ours: the stop script's --clean refuses to delete a directory without it.
touch "$TEMP_DIR/.distracer-ray-head"
STATE="$TEMP_DIR/head.env"
PIDS="$TEMP_DIR/head.pids"
START_LOG="$TEMP_DIR/start.log"

# One head per temp dir: refuse to start a second one over a live one.
if [[ -f "$PIDS" ]]; then
    while read -r pid; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -qF -- "$TEMP_DIR" "/proc/$pid/cmdline" 2>/dev/null; then
            die "a head already runs in $TEMP_DIR (pid $pid); stop it first: $SCRIPT_DIR/stop_local_head.sh --temp-dir $TEMP_DIR"
        fi
    done < <(sed -n 's/^pid=//p' "$PIDS")
fi

# --- ports ------------------------------------------------------------------------------------------
if (( FREE_PORTS )); then
    PORT=auto DASHBOARD_PORT=auto CLIENT_PORT=auto AGENT_PORT=auto
fi
# Replace each "auto" by a port the kernel hands out as free (all bound at once, so they differ).
read -r PORT DASHBOARD_PORT CLIENT_PORT AGENT_PORT < <("$PY" - "$PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$AGENT_PORT" <<'EOF'
import socket, sys
socks, out = [], []
for want in sys.argv[1:]:
    if want == "auto":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        want = str(s.getsockname()[1])
    out.append(want)
print(*out)
for s in socks:
    s.close()
EOF
)
for p in "$PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$AGENT_PORT"; do
    if ! [[ "$p" =~ ^[0-9]+$ ]] || (( p < 1 || p > 65535 )); then die "bad port '$p'"; fi
done
busy="$("$PY" - "$PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$AGENT_PORT" <<'EOF'
import socket, sys
busy = []
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        # As Ray's servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            busy.append(str(port))
print(" ".join(busy))
EOF
)"
[[ -z "$busy" ]] || die "port(s) $busy already in use on 127.0.0.1 (another Ray head?); choose others (--port/--dashboard-port/--client-port/--agent-port) or pass --free-ports"

# --- token ------------------------------------------------------------------------------------------
# `ray start` with RAY_AUTH_MODE=token refuses to start without a token (it only generates one for
# ray.init()), so make one here. 32 random bytes, hex: the same kind of secret `ray get-auth-token
# --generate` writes, in a file only this user can read.
if [[ ! -s "$TOKEN_FILE" ]]; then
    mkdir -p "$(dirname "$TOKEN_FILE")"
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$TOKEN_FILE")
    log "generated a new token in $TOKEN_FILE"
fi
TOKEN_FILE="$(cd "$(dirname "$TOKEN_FILE")" && pwd -P)/$(basename "$TOKEN_FILE")"
# A token readable by other users of the machine would let them run code as you: tighten an old file too.
chmod 600 "$TOKEN_FILE"

# --- start ------------------------------------------------------------------------------------------
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 + --node-ip-address=127.0.0.1: every Ray server (GCS, raylet,
# object manager, agents, client server) binds to loopback, not the machine's interface address.
# RAY_AUTH_TOKEN is dropped so the head uses the token file, the one source printed below.
# setsid gives the head's processes a session of their own, which the stop script uses to find
# exactly them (their command lines do not all mention the temp dir).
# The ray executable's directory goes first on PATH so that jobs (which inherit the raylet's
# environment) find the `distracer` entry point installed next to it.
log "starting Ray head in $TEMP_DIR (log: $START_LOG)"
set +e
env -u RAY_AUTH_TOKEN -u RAY_ADDRESS \
    PATH="$RAY_BIN_DIR:$PATH" \
    RAY_AUTH_MODE=token \
    RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" \
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    RAY_USAGE_STATS_ENABLED=0 \
    SDL_VIDEODRIVER=dummy \
    setsid -w "$RAY_BIN" start --head \
        --node-ip-address=127.0.0.1 \
        --port="$PORT" \
        --dashboard-host=127.0.0.1 \
        --dashboard-port="$DASHBOARD_PORT" \
        --dashboard-agent-listen-port="$AGENT_PORT" \
        --ray-client-server-port="$CLIENT_PORT" \
        --temp-dir="$TEMP_DIR" \
        --disable-usage-stats \
        --log-style=record \
        ${RAY_ARGS[@]+"${RAY_ARGS[@]}"} \
        </dev/null > >(tee "$START_LOG" >&2) 2>&1
rc=$?
set -e

# Record this head's processes: the session of its GCS server, found by the temp dir in its command line.
# (grep -F, not pgrep: the temp dir is a literal string, not a regular expression.)
# shellcheck disable=SC2009
GCS_PID="$(ps -u "$(id -u)" -o pid=,args= | grep -F -- "--log_dir=$TEMP_DIR/" | grep -F gcs_server \
    | awk 'NR == 1 { print $1 }' || true)"
if [[ -n "$GCS_PID" ]]; then
    SID="$(ps -o sid= -p "$GCS_PID" | tr -d ' ')"
    {
        echo "temp_dir=$TEMP_DIR"
        echo "sid=$SID"
        ps -eo pid=,sid= | awk -v sid="$SID" '$2 == sid { print "pid=" $1 }'
    } > "$PIDS"
fi

fail() {
    echo "$PROG: error: $*" >&2
    if [[ -f "$PIDS" ]]; then
        log "stopping the half-started head"
        "$SCRIPT_DIR/stop_local_head.sh" --temp-dir "$TEMP_DIR" >&2 || true
    fi
    exit 1
}

(( rc == 0 )) || fail "'ray start' exited with status $rc; see $START_LOG and $TEMP_DIR/session_latest/logs/"
[[ -n "$GCS_PID" ]] || fail "'ray start' succeeded but no gcs_server for $TEMP_DIR is running; see $START_LOG"

# --- wait for the Jobs API, and check that it really demands the token ---------------------------------
DASHBOARD_URL="http://127.0.0.1:$DASHBOARD_PORT"
check="$("$PY" - "$DASHBOARD_URL" "$TOKEN_FILE" "$TIMEOUT" <<'EOF'
import sys, time, urllib.error, urllib.request
url, token_file, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
token = open(token_file).read().strip()

def status(headers):
    req = urllib.request.Request(url + "/api/jobs/", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None

deadline = time.monotonic() + timeout
code = None
while time.monotonic() < deadline:
    code = status({"Authorization": f"Bearer {token}"})
    if code == 200:
        break
    time.sleep(1)
if code != 200:
    print(f"timeout: the Jobs API at {url} answered {code} with the token after {timeout:.0f}s")
    sys.exit(0)
anon = status({})
print("ok" if anon == 401 else f"noauth: the Jobs API answered {anon} without a token (expected 401)")
EOF
)"
case "$check" in
    ok) ;;
    noauth*) fail "token authentication is not in effect: ${check#noauth: }" ;;
    *) fail "${check#timeout: }; see $TEMP_DIR/session_latest/logs/dashboard.log" ;;
esac

# --- report -----------------------------------------------------------------------------------------
# RAY_ADDRESS (http) is what the `ray job` CLI and JobSubmissionClient want. A driver started directly on
# this machine (python -m distracer train ...) connects to the GCS instead: RAY_ADDRESS=$GCS_ADDRESS.
{
    echo "RAY_ADDRESS=$DASHBOARD_URL"
    echo "RAY_AUTH_MODE=token"
    echo "RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
    echo "DISTRACER_RAY_TEMP_DIR=$TEMP_DIR"
    echo "DISTRACER_RAY_GCS_ADDRESS=127.0.0.1:$PORT"
    echo "DISTRACER_RAY_DASHBOARD_URL=$DASHBOARD_URL"
    echo "DISTRACER_RAY_CLIENT_PORT=$CLIENT_PORT"
    echo "DISTRACER_RAY_AGENT_PORT=$AGENT_PORT"
    echo "DISTRACER_RAY_SESSION_DIR=$(readlink -f "$TEMP_DIR/session_latest")"
} > "$STATE"
cat "$STATE"
log "Ray head is up: dashboard $DASHBOARD_URL (token in $TOKEN_FILE), GCS 127.0.0.1:$PORT"
log "submit a job:  set -a; . $STATE; set +a; ray job submit --runtime-env cluster/runtime_env.yaml -- distracer train --config tune_configs/laptop.yaml --set run_dir=\$PWD/runs/job-laptop"
log "stop it:       $SCRIPT_DIR/stop_local_head.sh --temp-dir $TEMP_DIR"
