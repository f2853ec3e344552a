#!/usr/bin/env bash
# The GPU checks of issue 8 in one run, for a machine with one CUDA GPU:
#   1. the CUDA tests: fast inference path (CUDA graph replay, bf16) against the reference path, training;
#   2. per-chunk latency of the presets (benchmarks/bench_inference.py): reference, fast, fast-bf16;
#   3. ours against LeRobot at equal sizes, inference and training (benchmarks/bench_vs_lerobot.py).
#
#   benchmarks/run_gpu.sh OUT_DIR
#
# PYTHON runs our side (default: python3 with src/ on the path); LEROBOT_PYTHON runs LeRobot's
# (default: .bench-venvs/lerobot/bin/python from benchmarks/setup_envs.sh, or the Python that
# benchmarks/lerobot_offline.sh makes on a machine with no package index; SKIP_LEROBOT=1 leaves step 3 out).
# STEPS picks steps (default "tests latency lerobot"; "compile" adds torch.compile rows, minutes of compiling; "targets" is a short latency step: the issue's GPU target row on every path;
# "products" times the few-row products alone, "profile" the kernels of the target row's chunk).
# SIDES, INFER, TRAIN and PATHS override bench_vs_lerobot's sides, cases and paths (e.g. SIDES="ours ours-graph
# lerobot"; an empty TRAIN runs no training case) and VS_ARGS adds its options (e.g. "--train-rounds 8");
# TARGET_PATHS the paths of the targets step. DEVICE (default cuda) and BUDGET_S (seconds per latency row, default 1) are
# for smoke runs; PYTEST_K selects tests (pytest -k). Writes OUT_DIR/{env.txt,tests.log,inference.json,inference.log,skinny_matmul.jsonl,profile.json,vs_lerobot.json,
# vs_lerobot.log}; exits 1 if any step failed, after running all of them.
set -uo pipefail

out=${1:?usage: benchmarks/run_gpu.sh OUT_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(command -v "${PYTHON:-python3}") || { echo "no Python: ${PYTHON:-python3}" >&2; exit 1; }
lerobot_py=${LEROBOT_PYTHON:-$repo/.bench-venvs/lerobot/bin/python}
device=${DEVICE:-cuda}
budget=${BUDGET_S:-1}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo" || exit 1
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

step environment
{ nvidia-smi || true; "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; } > "$out/env.txt" 2>&1

steps=" ${STEPS:-tests latency lerobot} "
if [[ $steps == *" tests "* ]]; then
step tests
"$py" -m pytest -q -p no:cacheprovider -m "not slow" ${PYTEST_K:+-k "$PYTEST_K"} \
  tests/unit/test_fast_inference.py tests/unit/test_skinny_matmul.py tests/unit/test_train.py \
  > "$out/tests.log" 2>&1 || status=1
tail -n 3 "$out/tests.log" >&2
fi

parts=()
latency() {  # name, then bench_inference arguments
  local name=$1; shift
  "$py" benchmarks/bench_inference.py --device "$device" --warmup 3 --repeats 30 --budget-s "$budget" \
    --output "$out/inference_$name.json" "$@" >> "$out/inference.log" 2>&1 || status=1
  [ -f "$out/inference_$name.json" ] && parts+=("$out/inference_$name.json")
}
if [[ $steps == *" latency "* ]]; then
step latency
latency paper --presets pusht_image_unet --cameras 2 1 --image-sizes 96x96 --settings ddim16 ddim8 ddim4 warm ddpm100
latency paper_large --presets pusht_image_unet --cameras 2 1 --image-sizes 240x320 --settings ddim16
latency small --presets pusht_image_unet_small --cameras 1 2 --image-sizes 96x96 240x320 --settings ddim16 ddim8 warm
latency state --presets pusht_state_unet_small pusht_state_unet --settings ddim16 ddim8 warm ddpm100
latency transformer --presets pusht_state_transformer --settings ddim16 ddim8 warm ddpm100  # own file: a failure here keeps the UNet rows
fi
if [[ $steps == *" targets "* ]]; then
step "latency, target rows"
# shellcheck disable=SC2086  # a word list
latency targets --presets pusht_image_unet --cameras 2 --image-sizes 96x96 --settings ddim16 \
  --paths ${TARGET_PATHS-reference fast fast-bf16 fast-bf16-compile fast-int8-compile}
fi
if [[ $steps == *" compile "* ]]; then
step "latency, torch.compile"
latency compile --presets pusht_image_unet pusht_state_unet_small --cameras 2 --image-sizes 96x96 --settings ddim16 \
  --paths fast fast-compile fast-bf16-compile fast-int8-compile
fi
if [[ $steps == *" products "* ]]; then
step "few-row products: cuBLAS, batched split-K, Triton"
"$py" benchmarks/bench_skinny_matmul.py > "$out/skinny_matmul.jsonl" 2> "$out/skinny_matmul.log" || status=1
fi
if [[ $steps == *" profile "* ]]; then
step "kernel profile of the target row"
"$py" benchmarks/profile_inference.py --paths fast fast-bf16-compile fast-int8-compile --output "$out/profile.json" \
  > "$out/profile.log" 2>&1 || status=1
fi
[ ${#parts[@]} -gt 0 ] && { "$py" - "$out/inference.json" "${parts[@]}" <<'EOF' || status=1; }
import json, sys
docs = [json.load(open(p)) for p in sys.argv[2:]]
json.dump({"meta": docs[0]["meta"] if docs else {}, "results": [r for d in docs for r in d["results"]]},
          open(sys.argv[1], "w"), indent=2)
EOF
rm -f "${parts[@]}"
[ ${#parts[@]} -gt 0 ] && echo "$(grep -c '^{"preset"' "$out/inference.log") latency rows" >&2

if [[ $steps == *" lerobot "* && ${SKIP_LEROBOT:-0} != 1 ]]; then
  step "ours vs LeRobot"
  # shellcheck disable=SC2086  # word lists
  "$py" benchmarks/bench_vs_lerobot.py --device "$device" --threads 0 --sides ${SIDES-ours lerobot} \
    --python "ours=$py" "ours-graph=$py" "ours-compile=$py" "lerobot=$lerobot_py" --paths ${PATHS-e2e model} \
    --infer ${INFER-pusht_image_unet:2:16 pusht_image_unet:1:16 pusht_image_unet_small:1:16 pusht_state_unet_small:0:16} \
    --train ${TRAIN-pusht_image_unet:2:64 pusht_image_unet_small:1:64 pusht_state_unet_small:0:256} \
    ${VS_ARGS-} --output "$out/vs_lerobot.json" > /dev/null 2> "$out/vs_lerobot.log" || status=1
  tail -n 2 "$out/vs_lerobot.log" >&2
fi
step "done, status $status"
exit $status
