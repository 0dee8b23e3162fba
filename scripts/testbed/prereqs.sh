#!/usr/bin/env bash
# Installs the host tools SDP's tests use besides Docker (see docker.sh):
# git (with http-backend), Go for the sample services, PHP for `php -l` on
# config.php, busybox-static and debootstrap for the images. Only missing
# packages are installed, and apt's lists are refreshed only then.
set -euo pipefail

want=(git golang-go php-cli busybox-static debootstrap debian-archive-keyring ca-certificates)
pkgs=()
for pkg in "${want[@]}"; do
    # A git built from source (as on some developer machines) counts as git.
    if [ "$pkg" = git ] && command -v git >/dev/null 2>&1; then
        continue
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || pkgs+=("$pkg")
done
if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "prereqs: installing ${pkgs[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
fi
