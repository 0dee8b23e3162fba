#!/usr/bin/env bash
# Creates SDP's sample repositories as bare git repositories:
#   <out-dir>/bare/{account,payment,user}.git  Go services (stdlib only)
#   <out-dir>/bare/erangel.git                 the PHP gateway
# from the sources under testbed/samples/ (or $SDP_SAMPLES_DIR).
#
# Branches:
#   services: main, develop, feature/login-error (answers "feature":"login-error");
#             account also has broken-build (does not compile)
#   erangel:  main, develop, feature/gateway-x (reports feature gateway-x and
#             has its own OCP default for payment: ocp-payment-v2)
# Every branch commits its own name in the source (branch.go / branch.php).
#
# Idempotent: a repository that already exists is left as it is.
#
# Usage: sample-repos.sh <out-dir>
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 <out-dir>" >&2
    exit 2
fi
OUT="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
SAMPLES="${SDP_SAMPLES_DIR:-$HERE/../../testbed/samples}"
if [ ! -f "$SAMPLES/service/main.go" ] || [ ! -f "$SAMPLES/erangel/index.php" ]; then
    echo "sample-repos: no sample sources at $SAMPLES (set SDP_SAMPLES_DIR)" >&2
    exit 1
fi

if ! command -v git >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >&2
fi

mkdir -p "$OUT/bare"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sdp-sample-repos.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Commits must not depend on whoever runs this: no user or system config
# (signing, hooks, templates), a fixed identity, and fixed dates so the same
# samples give the same commit ids.
export HOME="$WORK" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME="SDP Samples" GIT_AUTHOR_EMAIL="samples@sdp.invalid"
export GIT_COMMITTER_NAME="SDP Samples" GIT_COMMITTER_EMAIL="samples@sdp.invalid"
TICK=0
commit() {
    TICK=$((TICK + 1))
    export GIT_AUTHOR_DATE="2024-01-01T00:00:${TICK}Z"
    export GIT_COMMITTER_DATE="$GIT_AUTHOR_DATE"
    git add -A
    git commit -q -m "$1"
}

go_branch() {
    printf 'package main\n\n// branch is the branch this commit was made on, so a deployment shows it.\nconst branch = "%s"\n' "$1" >branch.go
}

php_branch() {
    printf "<?php\ndefined('BASEPATH') OR exit('No direct script access allowed');\n\n// The branch this commit was made on, so the gateway can show it.\nreturn '%s';\n" "$1" >application/branch.php
}

# Moves a finished working repository into place as <name>.git; a bare clone
# made beside the target and renamed, so an interrupted run leaves no half
# repository behind.
publish() {
    local name="$1" work="$2" tmp="$OUT/bare/.$1.git.tmp"
    rm -rf "$tmp"
    git clone -q --bare "$work" "$tmp"
    git -C "$tmp" remote remove origin
    # Pushes over the test git server (http-backend) are allowed for
    # authenticated users; this states it rather than relying on defaults.
    git -C "$tmp" config http.receivepack true
    mv "$tmp" "$OUT/bare/$name.git"
    echo "sample-repos: $OUT/bare/$name.git" >&2
}

make_service() {
    local svc="$1" w="$WORK/$1"
    git init -q -b main "$w"
    (
        cd "$w"
        cp "$SAMPLES/service/main.go" "$SAMPLES/service/README.md" .
        printf 'module example.com/%s\n\ngo 1.19\n' "$svc" >go.mod
        printf 'package main\n\n// service is the name this sample answers with.\nconst service = "%s"\n' "$svc" >service.go
        go_branch main
        commit "$svc: sample service"

        git checkout -q -b develop
        go_branch develop
        printf '# Changes\n\n- develop: work in progress\n' >CHANGELOG.md
        commit "$svc: start develop"

        git checkout -q -b feature/login-error develop
        go_branch feature/login-error
        cp "$SAMPLES/service-branches/feature.go" feature.go
        commit "$svc: login error feature"

        if [ "$svc" = account ]; then
            git checkout -q -b broken-build main
            go_branch broken-build
            cp "$SAMPLES/service-branches/broken.go" broken.go
            commit "$svc: a change that does not compile"
        fi
        git checkout -q main
    )
    publish "$svc" "$w"
}

make_gateway() {
    local w="$WORK/erangel"
    git init -q -b main "$w"
    (
        cd "$w"
        cp -R "$SAMPLES/erangel/." .
        php_branch main
        commit "erangel: sample gateway"

        git checkout -q -b develop
        php_branch develop
        commit "erangel: start develop"

        git checkout -q -b feature/gateway-x develop
        php_branch feature/gateway-x
        cp "$SAMPLES/erangel-branches/feature.php" application/feature.php
        # A branch whose OCP defaults differ, so per-branch route snapshots
        # can be told apart.
        sed -i 's|ocp-payment\.example\.invalid|ocp-payment-v2.example.invalid|' \
            application/config/production/config.php
        commit "erangel: gateway-x"
        git checkout -q main
    )
    publish erangel "$w"
}

for svc in account payment user; do
    if [ -d "$OUT/bare/$svc.git" ]; then
        echo "sample-repos: $OUT/bare/$svc.git exists, kept" >&2
    else
        make_service "$svc"
    fi
done
if [ -d "$OUT/bare/erangel.git" ]; then
    echo "sample-repos: $OUT/bare/erangel.git exists, kept" >&2
else
    make_gateway
fi
