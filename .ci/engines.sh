#!/usr/bin/env bash
# Bring up dockerd, rootful podman and rootless podman on a Debian 12 machine without systemd,
# and import the registry-free base image into all three. Idempotent: safe to run again.
#
#   .ci/engines.sh          install + start everything, import the base image
#   .ci/engines.sh stop     stop the daemons this script started
#
# Tests read the sockets from /run/rlmesh/engines.env. Must run as root.
set -Eeuo pipefail

ROOTLESS_USER="${RLMESH_ROOTLESS_USER:-rlmesh}"
BASE_IMAGE="${RLMESH_BASE_IMAGE:-rlmesh-base:bookworm}"
BASE_TARBALL="${RLMESH_BASE_TARBALL:-/var/cache/rlmesh/base-bookworm.tar}"
PYTHON="${RLMESH_PYTHON:-python3}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=/run/rlmesh
ENV_FILE="$STATE_DIR/engines.env"
LOG_DIR=/var/log/rlmesh
DOCKER_SOCK=/var/run/docker.sock
ROOTFUL_SOCK=/run/podman/podman.sock
PACKAGES=(docker.io podman catatonit netavark aardvark-dns slirp4netns uidmap fuse-overlayfs
          iptables curl mmdebstrap python3-venv)

CURRENT_STEP="start"
T_START=$(date +%s%N)
trap 'echo "engines.sh: FAILED in step: $CURRENT_STEP (see logs in $LOG_DIR)" >&2' ERR

log() { echo "engines.sh: $*" >&2; }
die() { echo "engines.sh: ERROR in step '$CURRENT_STEP': $*" >&2; exit 1; }

# Seconds since $1 (a `date +%s%N` value), one decimal.
elapsed() { local ms=$((($(date +%s%N) - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

# Run one named step and print how long it took.
step() {
    CURRENT_STEP="$1"; shift
    local t0; t0=$(date +%s%N)
    "$@"
    printf 'engines.sh: %-24s %6s s\n' "$CURRENT_STEP" "$(elapsed "$t0")" >&2
}

# Poll a command until it succeeds, up to $1 seconds.
wait_for() {
    local timeout="$1"; shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Answers when the Docker-compatible API behind a unix socket responds to /_ping.
api_ping() { curl -sf --max-time 2 --unix-socket "$1" http://d/_ping; }

# Start a daemon in its own session (so `stop` can signal its whole process group).
daemon() {
    local name="$1"; shift
    (cd / && exec nohup setsid "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null) &
    echo $! >"$STATE_DIR/$name.pid"
}

install_packages() {
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed"
        return
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed: $(tail -5 "$LOG_DIR/apt.log")"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
        || die "apt-get install failed: $(tail -5 "$LOG_DIR/apt.log")"
}

start_dockerd() {
    if docker -H "unix://$DOCKER_SOCK" info >/dev/null 2>&1; then
        log "dockerd already answering"
        return
    fi
    # A dockerd that is still starting must not get a twin (they fight over iptables/bridge).
    pid_alive /var/run/docker.pid || daemon dockerd dockerd
    wait_for 30 docker -H "unix://$DOCKER_SOCK" info \
        || die "dockerd did not answer within 30 s: $(tail -5 "$LOG_DIR/dockerd.log")"
}

configure_podman() {
    # Podman's default nofile ulimit exceeds the hard limit here ("error setting rlimit type 7").
    local hard; hard=$(ulimit -Hn)
    mkdir -p /etc/containers
    local conf=/etc/containers/containers.conf
    local want
    want=$(printf '# Written by rlmesh .ci/engines.sh\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n\n[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' "$hard" "$hard")
    if [[ -f "$conf" ]] && ! grep -q '^# Written by rlmesh' "$conf"; then
        grep -q '^default_ulimits' "$conf" \
            || die "$conf exists and is not ours; add default_ulimits = [\"nofile=$hard:$hard\"] under [containers]"
        return
    fi
    [[ "$(cat "$conf" 2>/dev/null)" == "$want" ]] || echo "$want" >"$conf"
}

start_podman_rootful() {
    if api_ping "$ROOTFUL_SOCK" >/dev/null 2>&1; then
        log "rootful podman service already answering"
        return
    fi
    mkdir -p "$(dirname "$ROOTFUL_SOCK")"
    rm -f "$ROOTFUL_SOCK"
    daemon podman-rootful podman system service --time=0 "unix://$ROOTFUL_SOCK"
    wait_for 20 api_ping "$ROOTFUL_SOCK" \
        || die "rootful podman service did not answer: $(tail -5 "$LOG_DIR/podman-rootful.log")"
}

setup_rootless_user() {
    id -u "$ROOTLESS_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$ROOTLESS_USER"
    local uid home; uid=$(id -u "$ROOTLESS_USER"); home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
    # useradd normally allocates sub-ids; otherwise add 65536 placed by uid so ranges never overlap.
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        grep -q "^$ROOTLESS_USER:" "$f" || echo "$ROOTLESS_USER:$((100000 + uid * 65536)):65536" >>"$f"
    done
    # No udev here: slirp4netns cannot open the tun device at its default mode 0600.
    chmod 0666 /dev/net/tun
    # No systemd-logind either, so the runtime directory is ours to create.
    install -d -m 700 -o "$ROOTLESS_USER" -g "$ROOTLESS_USER" "/run/user/$uid" "/run/user/$uid/podman"
    mount --make-rshared /
    # Native rootless overlay instead of the slow vfs default.
    install -d -m 755 -o "$ROOTLESS_USER" -g "$ROOTLESS_USER" "$home/.config" "$home/.config/containers"
    local storage="$home/.config/containers/storage.conf"
    if [[ ! -f "$storage" ]]; then
        printf '[storage]\ndriver = "overlay"\n' >"$storage"
        chown "$ROOTLESS_USER:" "$storage"
    fi
}

rootless_sock() { echo "/run/user/$(id -u "$ROOTLESS_USER")/podman/podman.sock"; }

start_podman_rootless() {
    local sock; sock=$(rootless_sock)
    # Root can connect to the user's socket (no DAC check for root), so tests use it directly.
    if api_ping "$sock" >/dev/null 2>&1; then
        log "rootless podman service already answering"
        return
    fi
    rm -f "$sock"
    local uid home; uid=$(id -u "$ROOTLESS_USER"); home=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
    daemon podman-rootless runuser -u "$ROOTLESS_USER" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$home" USER="$ROOTLESS_USER" LOGNAME="$ROOTLESS_USER" XDG_RUNTIME_DIR="/run/user/$uid" \
        podman system service --time=0 "unix://$sock"
    wait_for 30 api_ping "$sock" \
        || die "rootless podman service did not answer: $(tail -5 "$LOG_DIR/podman-rootless.log")"
}

# A Python that has rlmesh with its docker and podman drivers. On a fresh machine (CI runs this
# before anything is installed) that is a venv of our own with an editable install of this repo.
find_python() {
    local probe='import rlmesh_images, rlmesh_runtimes.docker, rlmesh_runtimes.podman'
    if "$PYTHON" -c "$probe" >/dev/null 2>&1; then
        return
    fi
    local venv=/var/cache/rlmesh/venv
    if ! "$venv/bin/python" -c "$probe" >/dev/null 2>&1; then
        log "$PYTHON lacks rlmesh[docker,podman]; installing it into $venv"
        "$PYTHON" -m venv "$venv" || die "cannot create $venv with $PYTHON (set RLMESH_PYTHON)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -e "${REPO}[docker,podman]" >"$LOG_DIR/pip.log" 2>&1 \
            || die "pip install of rlmesh failed: $(tail -5 "$LOG_DIR/pip.log")"
    fi
    PYTHON="$venv/bin/python"
}

bootstrap() {
    "$PYTHON" -m rlmesh_images.bootstrap --tarball "$BASE_TARBALL" --tag "$BASE_IMAGE" "$@"
}

# Builds the rootfs tarball on first need (cached), then imports it where it is missing.
import_base_image() {
    bootstrap --runtime docker --host "unix://$DOCKER_SOCK"
    bootstrap --runtime podman --host "unix://$ROOTFUL_SOCK"
    bootstrap --runtime podman --host "unix://$(rootless_sock)"
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    {
        echo "DOCKER_HOST=unix://$DOCKER_SOCK"
        echo "RLMESH_PODMAN_ROOTFUL_SOCKET=unix://$ROOTFUL_SOCK"
        echo "RLMESH_PODMAN_ROOTLESS_SOCKET=unix://$(rootless_sock)"
        echo "RLMESH_ROOTLESS_USER=$ROOTLESS_USER"
        echo "RLMESH_BASE_IMAGE=$BASE_IMAGE"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

stop_one() {
    local name="$1" pidfile="$STATE_DIR/$1.pid"
    if pid_alive "$pidfile"; then
        local pid; pid=$(cat "$pidfile")
        # The rootless service runs in its own session; signal that whole process group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not exit"
        log "stopped $name"
    fi
    rm -f "$pidfile"
}

stop_all() {
    CURRENT_STEP="stop"
    stop_one podman-rootless
    # Rootless podman leaves a pause process holding its user namespace; it is ours to end too.
    if id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
        local pause; pause="/run/user/$(id -u "$ROOTLESS_USER")/libpod/tmp/pause.pid"
        if pid_alive "$pause"; then kill -TERM "$(cat "$pause")" && log "stopped rootless pause process"; fi
    fi
    stop_one podman-rootful
    stop_one dockerd
    rm -f "$ENV_FILE"
}

main() {
    [[ $EUID -eq 0 ]] || { echo "engines.sh: must run as root" >&2; exit 1; }
    mkdir -p "$STATE_DIR" "$LOG_DIR"
    if [[ "${1:-}" == "stop" ]]; then
        stop_all
        return
    fi
    [[ $# -eq 0 ]] || die "unknown argument '$1' (usage: engines.sh [stop])"
    step "install packages" install_packages
    step "start dockerd" start_dockerd
    step "configure podman" configure_podman
    step "start rootful podman" start_podman_rootful
    step "set up rootless user" setup_rootless_user
    step "start rootless podman" start_podman_rootless
    step "python for bootstrap" find_python
    step "base image" import_base_image
    step "write engines.env" write_env
    log "all engines up in $(elapsed "$T_START") s; settings in $ENV_FILE"
}

main "$@"
