#!/usr/bin/env bash
# LeRobot 0.4.4 for bench_vs_lerobot.py on a machine with no package index but a CUDA torch of its own
# (the lent GPU machines: Python 3.12, torch 2.11). LeRobot's pins (torch < 2.11) cannot hold there, so
# both sides run on that machine's torch; LeRobot gets its own diffusers / huggingface_hub versions.
#
#   benchmarks/lerobot_offline.sh download DIR   # here, with pip access: wheels for Python 3.12 + a PyAV placeholder
#   benchmarks/lerobot_offline.sh ours DIR       # there: installs our side's missing packages into its python3
#   benchmarks/lerobot_offline.sh python DIR     # there: installs DIR, prints the path of a Python for --python lerobot=
#
# The Python it makes runs without site-packages (-S) and sees the machine's packages through a folder of
# links that leaves out transformers, peft, huggingface_hub and diffusers: LeRobot imports transformers
# whenever it is installed, and the machine's transformers needs a newer huggingface_hub than LeRobot's.
# PyAV (video decoding, never timed here) is replaced by a placeholder module that raises on use.
# `ours` installs, without dependencies, our core's packages that such a machine lacks (diffusers, zarr) into
# the machine's own python3: meant for a lent machine that is thrown away afterwards.
set -euo pipefail

cmd=${1:?usage: lerobot_offline.sh download|ours|python DIR}
dir=${2:?usage: lerobot_offline.sh download|ours|python DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# LeRobot and what it imports for the diffusion policy that such a machine lacks (from requirements/bench-lerobot.txt).
wheels="lerobot==0.4.4 diffusers==0.35.2 huggingface_hub==0.35.3 draccus==0.10.0 gymnasium==1.4.0
  Farama-Notifications==0.0.6 deepdiff==8.6.2 orderly-set==5.5.0 jsonlines==4.0.0 termcolor==3.3.0 mergedeep==1.3.4
  pyyaml-include==1.4.1 toml==0.10.2 pyserial==3.5 datasets==4.8.5 multiprocess==0.70.19 dill==0.4.1"
# Our side (requirements/core.txt) on that machine: what its image lacks.
ours="diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0"
pip_py312() {  # folder, requirements...
  local into=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$into" "$@"
}

case $cmd in
download)
  mkdir -p "$dir/wheels" "$dir/ours" "$dir/stub/av"
  # shellcheck disable=SC2086  # word lists
  pip_py312 "$dir/wheels" $wheels
  # shellcheck disable=SC2086
  pip_py312 "$dir/ours" $ours
  cat > "$dir/stub/av/__init__.py" <<'PY'
"""Placeholder for PyAV: LeRobot imports it for video decoding, which the benchmark never runs.
Only av.logging's level constants exist; anything else raises ImportError."""

import logging as _logging
import types as _types

logging = _types.SimpleNamespace(WARNING=_logging.WARNING, INFO=_logging.INFO, ERROR=_logging.ERROR)


def __getattr__(name: str):
    raise ImportError(f"PyAV is not installed here (placeholder module); av.{name} is unavailable")
PY
  du -sh "$dir"
  ;;
ours)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$dir"/ours/*.whl
  python3 -c "import diffusers, zarr, torch; print('ours: diffusers', diffusers.__version__, 'zarr', zarr.__version__, 'torch', torch.__version__)"
  ;;
python)
  dir=$(cd "$dir" && pwd)
  work=${LEROBOT_OFFLINE_ROOT:-/tmp/lerobot-offline}
  host=$(command -v python3)
  rm -rf "$work" && mkdir -p "$work/site" "$work/base"
  "$host" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$dir"/wheels/*.whl
  base=$("$host" -c 'import site; print(site.getsitepackages()[0])')
  for entry in "$base"/*; do
    case $(basename "$entry") in
      transformers|transformers-*|peft|peft-*|huggingface_hub|huggingface_hub-*|diffusers|diffusers-*) ;;
      *) ln -s "$entry" "$work/base/" ;;
    esac
  done
  printf '#!/bin/sh\nPYTHONPATH=%s exec %s -S "$@"\n' "$work/site:$dir/stub:$work/base" "$host" > "$work/python"
  chmod +x "$work/python"
  (cd "$repo/benchmarks/vs_lerobot" && "$work/python" -c "import worker_lerobot, lerobot, torch, diffusers
print('lerobot', lerobot.__version__, 'torch', torch.__version__, 'diffusers', diffusers.__version__)" >&2)
  echo "$work/python"
  ;;
*) echo "unknown command: $cmd (download, ours or python)" >&2; exit 2 ;;
esac
