# Source me: activates the venv and the colcon workspace of dp_bringup.
#   source scripts/env.sh
_dp_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for _d in ${ROS_DISTRO:+/opt/ros/$ROS_DISTRO} /opt/ros/kilted /opt/ros/jazzy /opt/ros/rolling; do
  if [ -f "$_d/setup.bash" ]; then source "$_d/setup.bash"; break; fi
done
source "${DP_VENV:-$_dp_repo/.venv}/bin/activate"
[ -f "$_d/setup.bash" ] || export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
source "$_dp_repo/install/setup.bash"
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
unset _dp_repo _d
