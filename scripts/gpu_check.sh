#!/usr/bin/env bash
# The GPU checks, on a machine with one CUDA device and no network (see README, "On a GPU").
#   bash scripts/gpu_check.sh OUT_DIR [WORK_DIR]
# Builds random-weight models of real shapes (no download), then:
#   1. parity: the same comparison on CPU float32, CUDA float32, CUDA bfloat16,
#      --sequential, a --base-cache, and a --device-map split across GPU and CPU
#   2. speed: `driftscope bench` on the Gemma 3 262k shape and the Llama 3.2 1B shape
#   3. GPU memory: one adapter against three in one run, paired and --sequential
# Each step has its own time limit, so one that fails does not stop the rest.
set -u
OUT=${1:?OUT_DIR}; W=${2:-/tmp/gpu-work}
mkdir -p "$OUT" "$W/r"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ds() { timeout "$1" python3 -m driftscope "${@:2}" --no-html 2>&1 | tail -4; }
step() { echo; echo "== $* ($(date +%T))"; }

step versions
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"

step models
timeout 120 python3 -m driftscope bench-models "$W/g" --shape gemma3-262k 2>&1 | tail -2
timeout 240 python3 -m driftscope bench-models "$W/l" --shape llama3-1b 2>&1 | tail -2
timeout 120 python3 - "$W" <<'PY'
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
w = sys.argv[1]
for i in (1, 2, 3):  # three LoRAs of the 1B shape, random (non-zero) B so each moves the function
    torch.manual_seed(i)
    m = AutoModelForCausalLM.from_pretrained(f"{w}/l/base", dtype=torch.bfloat16)
    m = get_peft_model(m, LoraConfig(r=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    m.save_pretrained(f"{w}/a{i}")
print("adapters written")
PY

step "parity on the 262k shape (general suite)"
G="$W/g/base $W/g/perturbed --probes general"
ds 300 compare $G --device cpu --dtype float32 --out "$W/r/cpu32"
ds 120 compare $G --device cuda --dtype float32 --out "$W/r/cuda32"
timeout 120 python3 -m driftscope compare $G --device cuda --dtype bfloat16 --out "$W/r/cuda16" 2>&1 | tail -3
ds 120 compare $G --device cuda --dtype float32 --sequential --out "$W/r/seq32"
timeout 120 python3 -m driftscope capture "$W/g/base" --probes general --device cuda --dtype float32 --out "$W/cache" 2>&1 | tail -2
ds 120 compare --base-cache "$W/cache" "$W/g/perturbed" --probes general --device cuda --dtype float32 --out "$W/r/cache32"
ds 300 compare $G --device-map auto --max-memory 0=300MiB,cpu=40GiB --dtype float32 --out "$W/r/map32"
python3 scripts/gpu_parity.py "$W/r" cpu32 cuda32 cuda16 seq32 cache32 map32 | tee "$OUT/parity.txt"
ls "$W/r/cuda16"

step "bench: 262k shape, CUDA bfloat16, 500 probes"
timeout 420 python3 -m driftscope bench "$W/g/base" "$W/g/perturbed" --sizes 500 --device cuda --dtype bfloat16 --json "$OUT/bench_gemma.json" 2>&1 | tail -45
step "GPU memory: Llama 1B shape, 1 adapter vs 3 (bf16, general suite)"
L="$W/l/base --probes general --no-weights --device cuda --dtype bfloat16"
ds 180 compare $L "$W/a1" --out "$W/r/ad1"
ds 180 compare $L "$W/a1" "$W/a2" "$W/a3" --out "$W/r/ad3"
ds 180 compare $L "$W/a1" --sequential --out "$W/r/ad1s"
ds 180 compare $L "$W/a1" "$W/a2" "$W/a3" --sequential --out "$W/r/ad3s"
python3 scripts/gpu_parity.py --memory "$W/r" ad1 ad3 ad1s ad3s | tee "$OUT/memory.txt"
step "bench: Llama 3.2 1B shape, CUDA bfloat16, 500 probes"
timeout 420 python3 -m driftscope bench "$W/l/base" "$W/l/perturbed" --sizes 500 --device cuda --dtype bfloat16 --json "$OUT/bench_llama.json" 2>&1 | tail -45

step "pytest: placement tests with a GPU present"
timeout 240 python3 -m pytest -q -x tests/test_placement.py -p no:cacheprovider 2>&1 | tail -5

step done
