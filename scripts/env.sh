# Source me (from bash): activates the venv and the colcon workspace of dp_bringup.
#   source scripts/env.sh
if [ -z "${BASH_VERSION:-}" ]; then
  echo "scripts/env.sh: source it from bash (ROS 2's setup.bash and colcon's are bash scripts)" >&2
  return 1 2>/dev/null || exit 1
fi
case $- in *u*) _dp_nounset=1 ;; *) _dp_nounset= ;; esac
set +u  # ROS 2's and colcon's setup scripts read unset variables
_dp_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for _d in ${ROS_DISTRO:+/opt/ros/$ROS_DISTRO} /opt/ros/kilted /opt/ros/jazzy /opt/ros/rolling; do
  if [ -f "$_d/setup.bash" ]; then source "$_d/setup.bash"; break; fi
done
source "${DP_VENV:-$_dp_repo/.venv}/bin/activate"
[ -f "$_d/setup.bash" ] || export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
source "$_dp_repo/install/setup.bash"
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
[ -n "$_dp_nounset" ] && set -u
unset _dp_repo _d _dp_nounset
