#!/usr/bin/env bash
# The main job: Push-T closed loop through the ROS 2 nodes (simulated cell -> policy node -> executor)
# with the bundled model. Logs live coverage; after EPISODES episodes (default 3, 0 = run until
# Ctrl-C) it prints the score. Extra arguments go to ros2 launch (e.g. device:=cuda).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
set +u; source "$REPO/scripts/env.sh"; set -u
exec ros2 launch dp_bringup ur5_pusht.launch.py num_episodes:="${EPISODES:-3}" "$@"
