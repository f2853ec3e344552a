#!/usr/bin/env bash
# One-command setup of dp_bringup: virtual environment, pinned dependencies, ROS 2, colcon build.
#
# - With ROS 2 installed system-wide (/opt/ros/<distro>, e.g. an official ROS image), that
#   installation provides rclpy, messages, launch and message_filters; the venv sees it.
# - Without it, ROS 2 Kilted comes from the PyPI binary wheels (Python 3.11) and the launch/CLI
#   stack from the wheelhouse in ../shared/wheels (or $DP_WHEELS).
# Idempotent: a second run with unchanged requirements only rebuilds with colcon (seconds).
#
# --deps-only: stop after the dependencies (no package install, no colcon build); the Docker image
# uses it to cache them in a layer that does not depend on the source code.
# Environment: DP_VENV (default .venv), DP_WHEELS (default ../shared/wheels), PYTHON (python3.11).
set -euo pipefail
DEPS_ONLY=0
case "${1:-}" in
  "") ;;
  --deps-only) DEPS_ONLY=1 ;;
  *) echo "usage: $0 [--deps-only]" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DP_VENV:-$REPO/.venv}
WHEELS=${DP_WHEELS:-$REPO/../shared/wheels}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- ROS 2: system-wide or PyPI wheels ------------------------------------------------------
ROS_SETUP=""
for d in ${ROS_DISTRO:+/opt/ros/$ROS_DISTRO} /opt/ros/kilted /opt/ros/jazzy /opt/ros/rolling; do
  if [ -f "$d/setup.bash" ]; then ROS_SETUP="$d/setup.bash"; break; fi
done
if [ -n "$ROS_SETUP" ]; then
  log "using system ROS 2 from ${ROS_SETUP%/setup.bash}"
  set +u; source "$ROS_SETUP"; set -u
  MODE=system
else
  MODE=pypi
  [ -d "$WHEELS" ] || die "no system ROS 2 and no wheelhouse at $WHEELS (set DP_WHEELS): the launch/CLI wheels are needed"
fi

# --- apt packages for pyrealsense2 (libusb) and pyspacemouse (hidapi) -----------------------
APT_PKGS="libusb-1.0-0 libhidapi-hidraw0"
missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || printf "%s " "$p"; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing apt packages: $missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    log "warning: missing apt packages ($missing); RealSense/SpaceMouse need them (run as root or: sudo apt-get install $missing)"
  fi
fi

# --- virtual environment --------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY=${PYTHON:-}
  if [ -z "$PY" ]; then
    if [ "$MODE" = system ]; then PY=python3
    elif command -v python3.11 >/dev/null; then PY=python3.11
    else PY=python3; fi
  fi
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$MODE" = system ] || [ "$ver" = 3.11 ] || die "the PyPI ROS 2 wheels need Python 3.11, found $PY = $ver (set PYTHON=...)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python $ver ($PY, the Python of ${ROS_SETUP%/setup.bash}) \
is too old: the pinned numpy 2.4 and zarr 3 need Python 3.11 or newer. Use ROS 2 Jazzy or Kilted (Python 3.12), \
or the Docker image (scripts/docker.sh)"
  log "creating $VENV with $PY ($ver)"
  if [ "$MODE" = system ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.dp-setup-stamp"
pkg_stamp="$VENV/.dp-package-stamp"
want=$(cat "$REPO"/requirements/*.txt "$REPO/scripts/setup.sh" | sha256sum | cut -d' ' -f1)-$MODE
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  if [ "$have" != "$want-deps" ]; then  # "-deps": requirements installed, the package not yet
    log "installing Python dependencies (first run: a few minutes, torch is large)"
    python -m pip install -q --upgrade pip
    reqs=(-r "$REPO/requirements/core.txt" -r "$REPO/requirements/hw.txt" -r "$REPO/requirements/dev.txt")
    if [ "$MODE" = pypi ]; then
      python -m pip install -q --find-links "$WHEELS" "${reqs[@]}" -r "$REPO/requirements/ros.txt"
    else
      python -m pip install -q "${reqs[@]}"
    fi
    echo "$want-deps" > "$stamp"
  fi
  if [ "$DEPS_ONLY" = 1 ]; then log "dependencies installed (--deps-only: no package install, no build)"; exit 0; fi
  rm -f "$pkg_stamp"
  echo "$want" > "$stamp"
else
  log "dependencies up to date"
fi
[ "$DEPS_ONLY" = 1 ] && { log "done (--deps-only)"; exit 0; }
# The editable install's console scripts come from setup.py: reinstall when it changes (seconds).
pkg_want=$(sha256sum "$REPO/setup.py" | cut -d' ' -f1)
if [ "$(cat "$pkg_stamp" 2>/dev/null || true)" != "$pkg_want" ]; then
  log "installing the dp_bringup package (editable: dp-train, dp-eval, dp-replay, ...)"
  python -m pip install -q --no-deps --no-build-isolation -e "$REPO"
  echo "$pkg_want" > "$pkg_stamp"
fi

# --- build the ROS 2 package ------------------------------------------------------------------
[ "$MODE" = pypi ] && export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
log "colcon build"
(cd "$REPO" && colcon --log-base log build --base-paths . --build-base build --install-base install \
   --event-handlers console_cohesion- summary- status- >/dev/null) || die "colcon build failed (see $REPO/log/latest_build)"
log "done: source scripts/env.sh to use ros2 launch dp_bringup ..."
