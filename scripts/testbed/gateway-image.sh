#!/usr/bin/env bash
# Builds the gateway image SDP's tests and `sdp dev` use in place of the
# company's php:8.3-apache: Apache 2.4 + mod_php + php-curl from Debian
# packages, made offline-friendly with debootstrap and `docker import` (no
# registry is reachable, so nothing can be pulled).
#
# Usage: gateway-image.sh [TAG]        (default sdp-gateway:bookworm)
#
# Layout of the image (the gateway agent and the tests rely on it):
#   DocumentRoot        /var/www/html, AllowOverride All, mod_rewrite on
#   erangel repository  bind-mounted at /var/www/html/erangel, so it is
#                       served under the URL prefix /erangel/ and its own
#                       .htaccess routes every request to its index.php
#   listen address      $SDP_LISTEN (an Apache `Listen` argument), default 80;
#                       set e.g. -e SDP_LISTEN=127.0.0.1:18080 with
#                       --network host
#   command             apache2-foreground (Apache as PID 1, logs to
#                       docker logs)
#   graceful reload     docker exec <container> apachectl graceful
#                       (or: docker kill -s USR1 <container>)
#
# Environment: SDP_DEBIAN_MIRROR overrides the mirror (default: the one apt
# uses on this host), SDP_DEBIAN_SUITE the suite (default bookworm).
set -euo pipefail

TAG="${1:-sdp-gateway:bookworm}"
# Bumped whenever the image's contents change: an image with an older
# version under the same tag is rebuilt, an equal one reused.
VERSION=1
SUITE="${SDP_DEBIAN_SUITE:-bookworm}"

log() { printf 'gateway-image: %s\n' "$*" >&2; }

current() {
    docker image inspect -f '{{index .Config.Labels "sdp.testbed.image-version"}}' "$TAG" 2>/dev/null || true
}
if [ "$(current)" = "$VERSION" ]; then
    exit 0
fi

# Parallel test processes may all ask for the image at once; debootstrap
# into one directory twice would corrupt both builds.
exec 9>"/tmp/sdp-gateway-image.lock"
flock 9
if [ "$(current)" = "$VERSION" ]; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "debootstrap needs root"
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
apt_install debootstrap debian-archive-keyring

# The mirror apt already uses here: the only Debian archive this machine may
# reach. deb822 files (*.sources) first, then one-line sources.list entries;
# security and updates archives are skipped because debootstrap wants the
# main archive.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { if (uri != "" && suites ~ /(^| )'"$SUITE"'( |$)/) { print uri; exit } uri=""; suites=""; next }
            /^URIs:/ { uri=$2 }
            /^Suites:/ { $1=""; suites=$0 " " }
            END { if (uri != "" && suites ~ /(^| )'"$SUITE"'( |$)/) print uri }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {
                i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) == "'"$SUITE"'") print $i
             }' "$f"
    done
}
MIRROR="${SDP_DEBIAN_MIRROR:-$(find_mirror | head -n1)}"
if [ -z "$MIRROR" ]; then
    log "no Debian mirror for $SUITE found in /etc/apt/sources.list{,.d}; set SDP_DEBIAN_MIRROR"
    exit 1
fi

WORK="$(mktemp -d /var/tmp/sdp-gateway-image.XXXXXX)"
cleanup() {
    # A failed debootstrap can leave /proc mounted inside the target.
    umount -l "$WORK/rootfs/proc" 2>/dev/null || true
    umount -l "$WORK/rootfs/sys" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/rootfs"

log "debootstrap $SUITE from $MIRROR (a few minutes)"
debootstrap --variant=minbase \
    --include=apache2,libapache2-mod-php,php-curl \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
}

# mod_php needs the prefork MPM; the package's postinst normally switches,
# but do it explicitly so the image never depends on postinst side effects.
chroot "$ROOT" a2dismod -q -f mpm_event mpm_worker >/dev/null 2>&1 || true
chroot "$ROOT" a2enmod -q mpm_prefork rewrite >/dev/null
PHPLOAD="$(find "$ROOT/etc/apache2/mods-available" -name 'php*.load' | head -n1)"
PHPMOD="$(basename "$PHPLOAD" .load)"
chroot "$ROOT" a2enmod -q "$PHPMOD" >/dev/null

# Listen address from the environment so one image serves both the published
# bridge setup (port 80) and --network host (a free loopback port).
# shellcheck disable=SC2016 # ${SDP_LISTEN} is for Apache to expand
sed -i 's/^Listen 80$/Listen ${SDP_LISTEN}/' "$ROOT/etc/apache2/ports.conf"
sed -i '/^\s*Listen 443/d' "$ROOT/etc/apache2/ports.conf"
cat >>"$ROOT/etc/apache2/envvars" <<'ENVVARS'

# SDP: where Apache listens (an Apache `Listen` argument: port or addr:port).
export SDP_LISTEN="${SDP_LISTEN:-80}"
ENVVARS

cat >"$ROOT/etc/apache2/conf-available/sdp.conf" <<'CONF'
# SDP gateway image: the erangel repository is bind-mounted at
# /var/www/html/erangel and routes itself with its own .htaccess.
ServerName localhost
ErrorLog /proc/self/fd/2
<Directory /var/www/html>
    Options -Indexes +FollowSymLinks
    AllowOverride All
    Require all granted
</Directory>
CONF
chroot "$ROOT" a2enconf -q sdp >/dev/null

# Logs go to docker logs, like the official php images.
ln -sfT /proc/self/fd/1 "$ROOT/var/log/apache2/access.log"
ln -sfT /proc/self/fd/2 "$ROOT/var/log/apache2/error.log"
ln -sfT /proc/self/fd/1 "$ROOT/var/log/apache2/other_vhosts_access.log"

# The agent patches config.php and reloads; opcache must not serve the old
# file for the next couple of seconds.
for d in "$ROOT"/etc/php/*/apache2/conf.d; do
    printf 'opcache.revalidate_freq=0\nexpose_php=Off\n' >"$d/99-sdp.ini"
done

rm -f "$ROOT/var/www/html/index.html"
mkdir -p "$ROOT/var/www/html/erangel"

cat >"$ROOT/usr/local/bin/apache2-foreground" <<'FG'
#!/bin/sh
# Apache as PID 1 so `docker stop` and `docker kill -s USR1` reach it.
set -e
. /etc/apache2/envvars
mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR"
rm -f "$APACHE_PID_FILE"
exec apache2 -DFOREGROUND "$@"
FG
chmod 0755 "$ROOT/usr/local/bin/apache2-foreground"

# Keep the image small: nothing below is needed at run time.
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/var/log/*.log "$ROOT"/var/cache/debconf/*-old "$ROOT"/tmp/* "$ROOT"/var/tmp/*
: >"$ROOT/etc/resolv.conf"
umount -l "$ROOT/proc" 2>/dev/null || true
umount -l "$ROOT/sys" 2>/dev/null || true

log "importing $TAG"
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SDP_LISTEN=80' \
    --change 'EXPOSE 80' \
    --change 'WORKDIR /var/www/html' \
    --change "LABEL sdp.testbed.image-version=$VERSION" \
    --change 'CMD ["apache2-foreground"]' \
    - "$TAG" >/dev/null
log "built $TAG"
