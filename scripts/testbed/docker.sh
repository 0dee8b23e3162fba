#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, starting Debian's
# docker.io when none does (CI machines start clean). Idempotent: exits at
# once when `docker info` already works.
#
# Environment: SDP_DOCKER_WAIT (seconds to wait for the engine, default 60),
# SDP_DOCKERD_LOG (the engine's log, default /var/log/sdp-dockerd.log),
# SDP_DOCKER_LOCK (the lock serializing starters, default /tmp/sdp-docker.lock).
set -euo pipefail

WAIT="${SDP_DOCKER_WAIT:-60}"
LOG="${SDP_DOCKERD_LOG:-/var/log/sdp-dockerd.log}"
LOCK="${SDP_DOCKER_LOCK:-/tmp/sdp-docker.lock}"

log() { printf 'docker.sh: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
    exit 0
fi

# Two test processes starting two engines on one socket would fight.
# Bounded: a holder that never lets go must not hang CI.
exec 9>"$LOCK"
if ! flock -w "$WAIT" 9; then
    log "another starter held $LOCK for ${WAIT}s; giving up"
    exit 1
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "no Docker engine answers and starting one needs root"
    exit 1
fi

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    # iptables for the bridge network's NAT rules, containerd and runc are
    # what dockerd starts containers with.
    apt_install docker.io containerd runc iptables
fi

# An engine may already be starting (its socket not up yet): wait for it
# rather than start a second one.
if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: $LOG)"
    # setsid + nohup: the engine must outlive this script and the test
    # process that ran it. 9>&-: an engine inheriting the lock would hold it
    # for its whole life, and every later starter would wait on it forever.
    setsid nohup dockerd >>"$LOG" 2>&1 </dev/null 9>&- &
fi

for _ in $(seq 1 "$WAIT"); do
    if docker info >/dev/null 2>&1; then
        log "engine is up"
        exit 0
    fi
    sleep 1
done
log "dockerd did not answer within ${WAIT}s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
