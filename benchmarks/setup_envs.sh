#!/usr/bin/env bash
# Virtual environments for benchmarks/bench_vs_lerobot.py, in .bench-venvs/ (gitignored):
#   lerobot/       lerobot 0.4.4 on torch 2.9.1 (requirements/bench-lerobot.txt, fully pinned)
#   ours-torch29/  our requirements/core.txt with torch 2.9.1 / torchvision 0.24.1 (LeRobot's torch)
# Idempotent: an environment is rebuilt only when its requirements change. PYTHON picks the
# interpreter (default python3.11). About 10 GB of disk (two CUDA builds of torch).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${BENCH_VENVS:-$repo/.bench-venvs}
python=${PYTHON:-python3.11}
mkdir -p "$root"

# Our core requirements with LeRobot's torch, so that the framework version is not the difference.
sed -e 's/^torch==.*/torch==2.9.1/' -e 's/^torchvision==.*/torchvision==0.24.1/' \
    "$repo/requirements/core.txt" > "$root/ours-torch29.txt"

make_env() {  # name requirements-file
  local env=$root/$1 req=$2
  local stamp=$env/.requirements
  if [ -x "$env/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "$env: up to date"
    return
  fi
  echo "$env: installing from $req"
  rm -rf "$env"
  "$python" -m venv "$env"
  "$env/bin/pip" install --quiet -r "$req"
  cp "$req" "$stamp"
}

make_env lerobot "$repo/requirements/bench-lerobot.txt"
make_env ours-torch29 "$root/ours-torch29.txt"

"$root/lerobot/bin/python" -c "import lerobot, torch; print('lerobot', lerobot.__version__, 'torch', torch.__version__)"
"$root/ours-torch29/bin/python" -c "import diffusers, torch; print('ours-torch29: torch', torch.__version__, 'diffusers', diffusers.__version__)"
