#!/usr/bin/env bash
# The main job: Push-T with the bundled model, evaluated closed loop in the simulator.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
set +u; source "$REPO/scripts/env.sh"; set -u
cd "$REPO"
out=outputs/demo
dp-eval pusht --checkpoint models/pusht_state_unet_small.safetensors --episodes "${EPISODES:-10}" \
  --seed 100000 --output "$out/report.json" --video-dir "$out/videos" "$@"
echo "report: $out/report.json, videos: $out/videos/"
