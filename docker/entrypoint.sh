#!/usr/bin/env bash
# Container entry point: source ROS 2, the venv and the dp_bringup install tree, then
#   <file>.launch.py [arg:=value ...]  -> ros2 launch dp_bringup <file>.launch.py ...
#   /path/to/file.launch.py [...]      -> ros2 launch /path/to/file.launch.py ...
#   anything else                      -> run it (dp-train, dp-eval, ros2 topic list, bash, ...)
# A launch argument with an empty value (`checkpoint:=`, as compose writes an unset variable) is
# left out, so the launch file's default applies.
set -eo pipefail
# shellcheck disable=SC1091
source /opt/dp_bringup/scripts/env.sh
export PATH="/opt/dp_bringup/install/dp_bringup/lib/dp_bringup:$PATH"  # dp-train, dp-eval, dp-export
case "${1:-}" in
  "") echo "usage: <launch file> [name:=value ...] | <command> [args ...]" >&2; exit 2 ;;
  *.launch.py | *.launch.xml | *.launch.yaml)
    args=()
    for a in "${@:2}"; do [[ $a =~ ^[A-Za-z_][A-Za-z0-9_]*:=$ ]] || args+=("$a"); done
    if [[ $1 == */* ]]; then exec ros2 launch "$1" "${args[@]}"; fi
    exec ros2 launch dp_bringup "$1" "${args[@]}" ;;
  *) exec "$@" ;;
esac
