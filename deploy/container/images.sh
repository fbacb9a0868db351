#!/usr/bin/env bash
# Builds the project's images with podman, from a base made locally from Debian packages, so
# nothing is pulled from an image registry (none is reachable from the CI machines).
#
#   images.sh base                 the base image $CRM_SYNC_BASE_IMAGE (mmdebstrap bookworm minbase,
#                                  the same content as debian:bookworm-slim); its root file system is
#                                  cached in $CRM_SYNC_CACHE/images/, outside git
#   images.sh build [NAME...]      worker (crm-sync), kafka, prometheus; default: all three
#   images.sh podman ARGS...       podman with the project's containers.conf (runc, no default ulimits)
#   images.sh compose ARGS...      podman-compose (from .venv) with the same settings and the base
#   images.sh name NAME            prints the image name of NAME
#
# Docker users need none of this: `docker build .` and `docker compose up --build` use
# debian:bookworm-slim as the base (build argument BASE_IMAGE).
#
# Environment: CRM_SYNC_CACHE (default ~/.cache/crm-sync), CRM_SYNC_BASE_IMAGE (default
# localhost/crm-sync-base:bookworm), CRM_SYNC_IMAGE_TAG (default dev), PODMAN (default podman).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE_ROOT="${CRM_SYNC_CACHE:-$HOME/.cache/crm-sync}"
IMAGE_CACHE="$CACHE_ROOT/images"
BASE_IMAGE="${CRM_SYNC_BASE_IMAGE:-localhost/crm-sync-base:bookworm}"
TAG="${CRM_SYNC_IMAGE_TAG:-dev}"
PODMAN="${PODMAN:-podman}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$SCRIPT_DIR/containers.conf}"
export CRM_SYNC_BASE_IMAGE="$BASE_IMAGE" CRM_SYNC_IMAGE_TAG="$TAG"
export CRM_SYNC_KAFKA_LIBS="${CRM_SYNC_KAFKA_LIBS:-$CACHE_ROOT/kafka-$(bash "$ROOT/deploy/kafka/kafka.sh" version)/libs}"

log() { printf 'images.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

image_name() {
    case "$1" in
        worker) echo "localhost/crm-sync:$TAG" ;;
        kafka) echo "localhost/crm-sync-kafka:$TAG" ;;
        prometheus) echo "localhost/crm-sync-prometheus:$TAG" ;;
        *) die "unknown image: $1 (worker, kafka, prometheus)" ;;
    esac
}

cmd_base() {
    command -v "$PODMAN" >/dev/null || die "$PODMAN not found (./dev setup installs Debian's podman)"
    "$PODMAN" image exists "$BASE_IMAGE" && return 0
    local tar="$IMAGE_CACHE/debian-bookworm-minbase.tar"
    mkdir -p "$IMAGE_CACHE"
    exec 9>"$IMAGE_CACHE/base.lock"
    if command -v flock >/dev/null; then flock 9; fi
    "$PODMAN" image exists "$BASE_IMAGE" && return 0
    if [[ ! -f "$tar" ]]; then
        command -v mmdebstrap >/dev/null || die "mmdebstrap not found (./dev setup installs it)"
        log "making the bookworm base root file system ($tar)"
        # Like debian:bookworm-slim: minbase, no documentation or translations.
        mmdebstrap --quiet --variant=minbase --include=ca-certificates \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            --aptopt='APT::Install-Recommends "false"' \
            bookworm "$tar.part.tar" || { rm -rf "$tar.part.tar"; die "mmdebstrap failed"; }
        mv "$tar.part.tar" "$tar"
    fi
    log "importing $tar as $BASE_IMAGE"
    "$PODMAN" import --change 'CMD ["bash"]' "$tar" "$BASE_IMAGE" >/dev/null
    exec 9>&-
}

build_one() {
    local name=$1 image context dockerfile extra=()
    image="$(image_name "$name")"
    case "$name" in
        worker) context="$ROOT" dockerfile="$ROOT/Dockerfile" ;;
        kafka)
            PYTHON="${PYTHON:-python3}" bash "$ROOT/deploy/kafka/kafka.sh" fetch
            context="$ROOT/deploy/kafka" dockerfile="$ROOT/deploy/kafka/Dockerfile"
            extra=(--build-context "libs=$CRM_SYNC_KAFKA_LIBS") ;;
        prometheus) context="$ROOT/deploy/prometheus" dockerfile="$ROOT/deploy/prometheus/Dockerfile" ;;
    esac
    # The machine's CA bundle, for a TLS-inspecting proxy between the build and PyPI.
    local bundle="${CRM_SYNC_BUILD_CA_BUNDLE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}}"
    [[ -s "$bundle" ]] && extra+=(--secret "id=ca_bundle,src=$bundle")
    local t0=$SECONDS
    # docker format: OCI images drop HEALTHCHECK.
    "$PODMAN" build --quiet --pull=never --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        "${extra[@]}" -f "$dockerfile" -t "$image" "$context" >/dev/null
    log "built $image in $((SECONDS - t0)) s"
}

cmd_build() {
    cmd_base
    local names=("$@")
    ((${#names[@]})) || names=(worker kafka prometheus)
    for name in "${names[@]}"; do build_one "$name"; done
}

cmd_compose() {
    local compose="$ROOT/.venv/bin/podman-compose"
    [[ -x "$compose" ]] || compose="$(command -v podman-compose)" || die "podman-compose not found (./dev setup installs it)"
    cmd_base
    exec "$compose" --podman-path "$PODMAN" -f "$ROOT/docker-compose.yml" "$@"
}

(($#)) || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
sub=$1; shift
case "$sub" in
    base) cmd_base ;;
    build) cmd_build "$@" ;;
    podman) exec "$PODMAN" "$@" ;;
    compose) cmd_compose "$@" ;;
    name) image_name "${1:?name}" ;;
    *) die "unknown subcommand: $sub" ;;
esac
