#!/usr/bin/env bash
# Stop the Ray head that cluster/start_local_head.sh started in one temp dir, and nothing else.
#
# `ray stop` would kill every Ray process of the machine (other users' heads, other tests' ray.init()).
# This script kills only: the processes of the head's own session (recorded at start in DIR/head.pids),
# the processes whose command line names DIR, and all their descendants (workers, job drivers, which
# Ray puts in sessions of their own). Order as in `ray stop`: raylet first, then the other processes,
# the GCS server last; SIGTERM, then SIGKILL for what is still alive after the grace period.
#
# Usage:
#   cluster/stop_local_head.sh [--temp-dir DIR] [--grace S] [--clean]
#     --temp-dir DIR   the head's temp dir         DISTRACER_RAY_TEMP_DIR (/tmp/distracer-ray-$UID)
#     --grace S        seconds per stage before SIGKILL  DISTRACER_RAY_STOP_GRACE (10)
#     --clean          also delete DIR (logs included); only a dir the start script marked as its own
#
# Output: `DISTRACER_RAY_STOPPED=<number of processes stopped>` on stdout, progress on stderr.
# Exit status: 0 when no process of this head is left (also when none was running), 1 otherwise.
set -euo pipefail

PROG=stop_local_head
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
log() { echo "$PROG: $*" >&2; }

TEMP_DIR="${DISTRACER_RAY_TEMP_DIR:-${TMPDIR:-/tmp}/distracer-ray-$(id -u)}"
GRACE="${DISTRACER_RAY_STOP_GRACE:-10}"
CLEAN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --temp-dir) TEMP_DIR="${2:?--temp-dir needs a value}"; shift 2 ;;
        --grace) GRACE="${2:?--grace needs a value}"; shift 2 ;;
        --clean) CLEAN=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$GRACE'"

if [[ ! -d "$TEMP_DIR" ]]; then
    log "no temp dir $TEMP_DIR: nothing to stop"
    echo "DISTRACER_RAY_STOPPED=0"
    exit 0
fi
TEMP_DIR="$(cd "$TEMP_DIR" && pwd -P)"
[[ "$TEMP_DIR" != "/" ]] || die "refusing to act on /"

SID=""
if [[ -f "$TEMP_DIR/head.pids" ]]; then
    SID="$(sed -n 's/^sid=//p' "$TEMP_DIR/head.pids" | head -n1)"
fi

# Print the pids of this head's processes, one per line, from one snapshot of the process table.
# A session id is trusted only while some process of it still names DIR (after a reboot or a long
# time the recorded number may belong to someone else's session).
find_pids() {
    ps -u "$(id -u)" -o pid=,ppid=,sid=,args= | awk -v dir="$TEMP_DIR" -v sid="$SID" -v self="$$" '
        # "=DIR" followed by "/", " " or the end of the line: an option naming the temp dir itself
        # (--temp-dir=DIR, --log_dir=DIR/session_...), not a longer name that starts the same way.
        function names_dir(args,    i, rest, c, p) {
            rest = args
            while ((i = index(rest, dir)) > 0) {
                c = substr(rest, i + length(dir), 1)
                p = substr(rest, i - 1, 1)
                if (p == "=" && (c == "/" || c == " " || c == "")) return 1
                rest = substr(rest, i + length(dir))
            }
            return 0
        }
        {
            pid = $1; ppid[pid] = $2; psid[pid] = $3
            args = $0; sub(/^ *[0-9]+ +[0-9]+ +[0-9]+ /, "", args)
            pids[++n] = pid
            if (names_dir(args)) { root[pid] = 1; if ($3 == sid) sid_ok = 1 }
        }
        END {
            for (k = 1; k <= n; k++) { p = pids[k]; if (sid != "" && sid_ok && psid[p] == sid) root[p] = 1 }
            # Add descendants until nothing changes (job drivers and workers live in other sessions).
            do {
                changed = 0
                for (k = 1; k <= n; k++) {
                    p = pids[k]
                    if (!(p in root) && (ppid[p] in root)) { root[p] = 1; changed = 1 }
                }
            } while (changed)
            # Never this script, its ancestors (e.g. start_local_head.sh cleaning up after a failed
            # start, or a test runner) or its descendants (this very ps and awk).
            for (p = self; p != "" && p != 0 && !(p in seen); p = ppid[p]) { seen[p] = 1; delete root[p] }
            mine[self] = 1
            do {
                changed = 0
                for (k = 1; k <= n; k++) {
                    p = pids[k]
                    if (!(p in mine) && (ppid[p] in mine)) { mine[p] = 1; changed = 1 }
                }
            } while (changed)
            for (p in mine) delete root[p]
            for (p in root) print p
        }'
}

comm_of() { ps -o comm= -p "$1" 2>/dev/null || true; }

alive() {
    local out=() pid
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then out+=("$pid"); fi
    done
    echo "${out[@]+"${out[@]}"}"
}

# SIGTERM a group of pids, wait up to GRACE seconds, SIGKILL what is left.
stop_group() {
    local what="$1"; shift
    [[ $# -gt 0 ]] || return 0
    log "SIGTERM $what: $*"
    kill -TERM "$@" 2>/dev/null || true
    local waited=0 left
    while :; do
        left="$(alive "$@")"
        [[ -z "$left" ]] && return 0
        (( waited >= GRACE * 10 )) && break
        sleep 0.1
        waited=$((waited + 1))
    done
    log "SIGKILL $what still alive after ${GRACE}s: $left"
    # shellcheck disable=SC2086  # $left is a list of pids
    kill -KILL $left 2>/dev/null || true
    sleep 0.5
}

mapfile -t TARGETS < <(find_pids)
TOTAL=${#TARGETS[@]}
if (( TOTAL == 0 )); then
    log "no running Ray head found for $TEMP_DIR"
else
    RAYLETS=() GCS=() OTHERS=()
    for pid in "${TARGETS[@]}"; do
        case "$(comm_of "$pid")" in
            raylet) RAYLETS+=("$pid") ;;
            gcs_server) GCS+=("$pid") ;;
            "") ;;  # already gone
            *) OTHERS+=("$pid") ;;
        esac
    done
    # Raylet before its agents and workers (they fate-share with it), GCS last: the order of `ray stop`.
    stop_group raylet ${RAYLETS[@]+"${RAYLETS[@]}"}
    stop_group "other processes" ${OTHERS[@]+"${OTHERS[@]}"}
    stop_group gcs_server ${GCS[@]+"${GCS[@]}"}
    # Anything the head spawned while it was being stopped.
    mapfile -t LATE < <(find_pids)
    stop_group "late processes" ${LATE[@]+"${LATE[@]}"}
fi

mapfile -t LEFT < <(find_pids)
echo "DISTRACER_RAY_STOPPED=$TOTAL"
if (( ${#LEFT[@]} > 0 )); then
    die "processes of the head in $TEMP_DIR are still alive: ${LEFT[*]}"
fi

# The head is gone: drop the files that describe it as running. `ray_current_cluster` would make a
# later plain ray.init() with this temp dir try to join a dead cluster.
rm -f "$TEMP_DIR/head.env" "$TEMP_DIR/head.pids" "$TEMP_DIR/ray_current_cluster"
if (( CLEAN )); then
    if [[ -f "$TEMP_DIR/.distracer-ray-head" ]]; then
        rm -rf -- "$TEMP_DIR"
        log "removed $TEMP_DIR"
    else
        die "not removing $TEMP_DIR: it has no .distracer-ray-head marker (not made by start_local_head.sh)"
    fi
fi
(( TOTAL == 0 )) || log "stopped the Ray head in $TEMP_DIR ($TOTAL processes)"
