# shellcheck shell=bash
# Helpers shared by the benchmarks. Source it after defining `log`.

# stop_processes SECONDS PID...: SIGTERM each, wait up to SECONDS for all to exit (the server
# drains on SIGTERM), then SIGKILL whatever is left, and reap them all.
stop_processes() {
    local grace=$1 pid alive
    shift
    [ "$#" -gt 0 ] || return 0
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 $((grace * 10))); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 1 ] || break
        sleep 0.1
    done
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within ${grace}s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# apt_install PACKAGE: installs a Debian package the benchmark needs (root only). Needs $WORK
# for its log, and `die`.
apt_install() {
    [ "$(id -u)" -eq 0 ] || die "'$1' is missing; install it (apt-get install -y $1)"
    log "installing $1 with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$1" >"$WORK/apt-$1.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORK/apt-$1.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$1" >>"$WORK/apt-$1.log" 2>&1 ||
            {
                tail -n 20 "$WORK/apt-$1.log" >&2
                die "could not install $1"
            }
    fi
}
