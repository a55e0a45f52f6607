#!/usr/bin/env bash
# A python base image from Debian packages, for machines that reach no container registry:
#
#   docker/base.sh TAG PYTHON_MINOR ENGINE...     e.g. docker/base.sh localhost/dlrrec-base:bookworm-py3.11 3.11 podman
#
# debootstrap makes a minimal bookworm root (Debian's python3 with venv, CA certificates,
# passwd for useradd) from this machine's Debian mirror; the engine imports it as TAG.
# It stands in for python:X.Y-slim-bookworm, so its python3 must be that X.Y: refused
# otherwise. `python` is python3 (python-is-python3), as in the python image.
set -euo pipefail
TAG=$1 MINOR=$2
shift 2
ENGINE=("$@")

log() { printf '[base] %s\n' "$*" >&2; }

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# the mirror apt uses here (a deb822 or a one-line source), else Debian's CDN
mirror=$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}

root=$(mktemp -d "${TMPDIR:-/tmp}/dlrrec-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
log "debootstrap bookworm from $mirror"
SECONDS=0
nice -n 10 debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
  bookworm "$root/rootfs" "$mirror" >"$root/debootstrap.log" 2>&1 \
  || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
have=$(chroot "$root/rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$MINOR" ] || { log "bookworm's python3 is $have, the Dockerfile wants $MINOR"; exit 2; }
# what only the install needed: downloaded packages and package lists
rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/*
tar -C "$root/rootfs" --numeric-owner -c . | "${ENGINE[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >/dev/null
log "$TAG: $(chroot "$root/rootfs" python3 -V) in ${SECONDS}s"
