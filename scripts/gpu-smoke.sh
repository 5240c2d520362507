#!/usr/bin/env bash
# The paper's run path on a GPU machine, at toy size: install [train,gpu] (from the ranges) into .venv-gpu,
# build the offline sample and the tiny random Qwen2.5-VL, then
#   1. GRPO steps with vLLM generation in the training process (colocate), in bf16;
#   2. one GRPO step under DeepSpeed ZeRO-3 (accelerate launch, the paper recipe's accelerate config);
#   3. `globe eval` through a `vllm serve` of the tiny model.
# Where no GPU is present it says so in one line and exits 0. Logs go to $GPU_SMOKE_OUT (default: a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-smoke: skipped, no GPU here (nvidia-smi lists none)"
  exit 0
fi
PYTHON=${PYTHON:-python3}
venv=${GPU_VENV:-.venv-gpu}
work=${GPU_SMOKE_OUT:-$(mktemp -d)}
mkdir -p "$work"
step() { echo "gpu-smoke: $* ($(date +%T))"; }

# A machine without a registry (GPU_VENV: an environment made beforehand) skips the install.
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, deepspeed, trl" 2>/dev/null; then
  step "using $venv as it is"
else
  # From the ranges, on the GPU machine itself: vLLM brings the CUDA torch and image stack it pins, which
  # have no place in a lock the CPU machines read.
  step "installing [train,gpu] into $venv"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q ".[train,gpu]"
fi
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
export PATH="$PWD/$venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, vllm, deepspeed; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'vllm', vllm.__version__, 'deepspeed', deepspeed.__version__)"

step "sample build and tiny model"
mp16-reason build --sample --sample-size 32 --out "$work/sample" --quiet
tiny=$(python -c "from globe_train.modeling import resolve_model; print(resolve_model('bundled:tiny-qwen2.5-vl'))")
gpu=(--dataset_name "$work/sample" --use_cpu false --bf16 true --max_completion_length 16)

step "1. GRPO, vLLM colocate, bf16"
globe train grpo --recipe tiny-cpu "${gpu[@]}" --use_vllm true --vllm_mode colocate \
  --vllm_gpu_memory_utilization 0.2 --max_steps 2 --output_dir "$work/grpo-vllm" 2>&1 | tail -n 20

step "2. GRPO, one ZeRO-3 step"
accelerate launch --config_file globe_train/recipes/accelerate/zero3.yaml --num_processes 1 \
  -m globe_train.grpo --recipe tiny-cpu "${gpu[@]}" --max_steps 1 --output_dir "$work/grpo-zero3" 2>&1 | tail -n 20

step "3. globe eval through vllm serve"
port=8011
vllm serve "$tiny" --port $port --served-model-name tiny --max-model-len 2048 --gpu-memory-utilization 0.2 \
  >"$work/vllm.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 $server 2>/dev/null || { tail -n 40 "$work/vllm.log"; exit 1; }
  sleep 1
done
python - "$work" <<'PY'
import csv, sys
from pathlib import Path
from PIL import Image
work = Path(sys.argv[1]); (work / "bench").mkdir(exist_ok=True)
with open(work / "gt.csv", "w", newline="") as fh:
    w = csv.writer(fh); w.writerow(["IMG_ID", "LAT", "LON"])
    for i, (lat, lon, colour) in enumerate([(48.86, 2.35, "red"), (35.68, 139.65, "green"), (-33.87, 151.21, "blue")]):
        Image.new("RGB", (320, 240), colour).save(work / "bench" / f"p{i}.jpg"); w.writerow([f"p{i}", lat, lon])
PY
globe eval csv --data "$work/gt.csv" --images "$work/bench" --endpoint "http://127.0.0.1:$port/v1" \
  --endpoint-model tiny --max-new-tokens 24 --out "$work/eval" --bootstrap 0
step "passed; logs and outputs in $work"
