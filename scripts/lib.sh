# shellcheck shell=bash
# What scripts/replica, scripts/scratch-cluster and scripts/pgbouncer share; they source it
# (not executable on its own). Messages, running as postgres, the run lock, pid checks, and the
# state of a postmaster.
#
# The sourcing script sets ME (the prefix of its messages), USAGE (its usage line), LOCK_NAME and
# LOCK_HOLDER (for `lock`); the postmaster helpers read DATA, BIN and PORT.

# No psql or pg_isready here may wait forever on a frozen (SIGSTOPped) server.
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

# Every service of the project listens on the loopback address only.
HOST=127.0.0.1

usage() { echo "usage: $USAGE" >&2; }
say() { echo "$ME: $*"; }
die() { echo "$ME: error: $*" >&2; exit 1; }

# Run a command as the postgres user (root uses runuser; PgBouncer refuses root), from a directory
# postgres can read, with every descriptor above stderr closed: a daemon started from here must
# hold neither our lock nor a pipe of whoever called us (a CI runner waiting for its pipe to close
# would hang forever).
as_pg() {
    (
        cd /
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        if [ "$(id -un)" = postgres ]; then exec "$@"; else exec runuser -u postgres -- "$@"; fi
    )
}

# Only root (through runuser) or postgres may manage the services. usage: check_user [WHY]
check_user() {
    case "$(id -un)" in
        root) command -v runuser >/dev/null || die "runuser is missing (util-linux)";;
        postgres) ;;
        *) die "run this as root or as postgres${1:+ ($1)}";;
    esac
}

# Serialise runs on descriptor 9 (held until the script exits): the lock file is
# $TMPDIR/$LOCK_NAME.lock, and $LOCK_HOLDER says who holds it when the wait times out.
lock() {
    local lockfile=${TMPDIR:-/tmp}/$LOCK_NAME.lock
    exec 9>>"$lockfile" || die "cannot open the lock file $lockfile"
    chmod 666 "$lockfile" 2>/dev/null || true
    flock -w 120 9 || die "$LOCK_HOLDER holds $lockfile for more than 120 s"
}

# The pid on the first line of a pid file, if that process still exists (a zombie counts).
pid_in() {
    local pid
    pid=$(head -n 1 "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && ps -p "$pid" >/dev/null 2>&1 && echo "$pid"
}
# True when the process lives and is not a zombie (a killed daemon can linger as one a moment).
not_zombie() {
    case "$(ps -o stat= -p "$1" 2>/dev/null)" in Z*|"") return 1;; esac
}

# -- a postmaster (DATA, BIN, PORT) -----------------------------------------------------------

# The pid in postmaster.pid, if that process still exists (a zombie counts: until it is reaped its
# pid still locks the data directory).
postmaster_pid() { pid_in "$DATA/postmaster.pid"; }
# Running means alive and not a zombie.
postmaster_running() {
    local pid
    pid=$(postmaster_pid) || return 1
    not_zombie "$pid" || return 1
    as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}
answers() { pg_isready -q -h "$HOST" -p "$PORT" -t 2 >/dev/null 2>&1; }
# A postmaster frozen with SIGSTOP (a fault test's blackhole) is continued; then wait until it
# accepts connections (it may be starting or in crash recovery). usage: wake_and_wait [SECONDS]
wake_and_wait() {
    local pid
    pid=$(postmaster_pid) || return 1
    case "$(ps -o stat= -p "$pid" 2>/dev/null)" in
        T*) say "postmaster $pid was stopped (SIGSTOP): sending SIGCONT"; kill -CONT "$pid";;
    esac
    for _ in $(seq 1 "${1:-30}"); do answers && return 0; sleep 1; done
    return 1
}

# -- lines of ours in someone else's configuration file (scripts/replica's pg_hba.conf lines) --
# The block is "$MARK", the lines, "$MARK (end)": found, replaced and removed by its markers
# only, so the file's own lines are never touched. The file keeps its owner and mode.

# Insert the block before the file's first rule (so no earlier line shadows ours), unless the
# file has it already. Prints each line it adds; returns 1 when it had the block (nothing done).
# usage: marked_insert FILE MARK LINE...
marked_insert() {
    local file=$1 mark=$2 tmp
    shift 2
    grep -qxF "$mark" "$file" && return 1
    tmp=$(mktemp)
    awk -v mark="$mark" -v lines="$(printf '%s\n' "$@")" '
        function block() { print mark; print lines; print mark " (end)"; done = 1 }
        !done && $0 !~ /^[[:space:]]*(#|$)/ { block() }
        { print }
        END { if (!done) block() }
    ' "$file" >"$tmp"
    cat "$tmp" >"$file"
    rm -f "$tmp"
    printf '  + %s\n' "$@"
}

# Remove the block (markers included), leaving the rest of the file byte for byte; returns 1
# when the file has none. usage: marked_remove FILE MARK
marked_remove() {
    local file=$1 mark=$2 tmp
    grep -qxF "$mark" "$file" || return 1
    tmp=$(mktemp)
    awk -v mark="$mark" '
        $0 == mark { skipping = 1; next }
        skipping && $0 == mark " (end)" { skipping = 0; next }
        !skipping { print }
    ' "$file" >"$tmp"
    cat "$tmp" >"$file"
    rm -f "$tmp"
}
