#!/usr/bin/env bash
# Builds the runtime image SDP's tests and `sdp dev` use in place of the
# company's alpine:3.20: a busybox rootfs made offline from Debian's
# busybox-static and `docker import`ed. Static Go binaries
# (CGO_ENABLED=0) run on it; the micro agent bind-mounts the repository at
# /src and runs the built binary as the command.
#
# Usage: runtime-image.sh [TAG]        (default sdp-runtime:busybox)
set -euo pipefail

TAG="${1:-sdp-runtime:busybox}"
# Bumped whenever the image's contents change: an image with an older
# version under the same tag is rebuilt, an equal one reused.
VERSION=1

log() { printf 'runtime-image: %s\n' "$*" >&2; }

current() {
    docker image inspect -f '{{index .Config.Labels "sdp.testbed.image-version"}}' "$TAG" 2>/dev/null || true
}
if [ "$(current)" = "$VERSION" ]; then
    exit 0
fi

exec 9>"/tmp/sdp-runtime-image.lock"
flock 9
if [ "$(current)" = "$VERSION" ]; then
    exit 0
fi

BUSYBOX=/bin/busybox
if ! "$BUSYBOX" --list >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed"; then
    # The dynamic `busybox` package would need the host's libc inside the
    # image; only the static build stands alone.
    log "installing busybox-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >&2
fi

WORK="$(mktemp -d /var/tmp/sdp-runtime-image.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"

mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,var/run,src,app,proc,sys,dev}
install -d -m 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# The applet links are made here rather than with `busybox --install -s`
# inside a chroot: no chroot (and no root) needed, and every link points at
# /bin/busybox as seen inside the image.
for applet in $("$BUSYBOX" --list-full); do
    case "$applet" in bin/busybox | linuxrc) continue ;; esac
    mkdir -p "$ROOT/$(dirname "$applet")"
    ln -sf /bin/busybox "$ROOT/$applet"
done

cat >"$ROOT/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$ROOT/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
# Docker bind-mounts /etc/hosts, /etc/hostname and /etc/resolv.conf over
# these; they exist so the image also works under plain chroot. Go's
# resolver reads nsswitch.conf to decide whether /etc/hosts comes first.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/resolv.conf"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"

log "importing $TAG"
tar --numeric-owner --owner=0 --group=0 -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /' \
    --change "LABEL sdp.testbed.image-version=$VERSION" \
    --change 'CMD ["/bin/sh"]' \
    - "$TAG" >/dev/null
log "built $TAG"
