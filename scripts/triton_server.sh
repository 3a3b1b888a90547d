#!/usr/bin/env bash
# Triton Inference Server on this CPU (the `tritonserver` binary that nvidia-pytriton
# carries), serving a model repository made by scripts/triton_export.py over gRPC on
# 127.0.0.1 only. pytriton pins numpy<2, so the server gets its own environment; the
# models inside it run Voxline's own engine code from .venv (see the Python backend
# settings below).
#
#   scripts/triton_server.sh [PORT] [REPO]   # gRPC port (default 8001) and model
#       repository (default triton-models); first run installs pytriton (~1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${1:-8001}"
REPO="${2:-triton-models}"
[ -d "$REPO" ] || { echo "no model repository at $REPO: run .venv/bin/python scripts/triton_export.py $REPO" >&2; exit 2; }
REPO="$(cd "$REPO" && pwd)"
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 2; }
CACHE="${VOXLINE_CACHE:-$HOME/.cache/voxline}"
ENV="$CACHE/triton-env"
if [ ! -f "$ENV/.voxline-ready" ]; then
    python3.11 -m venv "$ENV"
    "$ENV/bin/pip" install -q "nvidia-pytriton==0.7.0"
    touch "$ENV/.voxline-ready"
fi
DIST=$("$ENV/bin/python" -c \
    "import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / 'tritonserver')")

# The Python backend runs each model in a stub process found beside libtriton_python.so.
# pytriton ships one stub per Python version and copies the right one in when it starts;
# here it is done once, into a backend folder of our own: the 3.11 stub, as .venv's
# interpreter is 3.11.
BACKENDS="$ENV/voxline-backends"
if [ ! -x "$BACKENDS/python/triton_python_backend_stub" ]; then
    mkdir -p "$BACKENDS/python"
    cp "$DIST/backends/python/libtriton_python.so" \
        "$DIST/backends/python/triton_python_backend_utils.py" "$BACKENDS/python/"
    cp "$DIST/python_backend_stubs/3.11/triton_python_backend_stub" "$BACKENDS/python/"
fi

# The stub embeds libpython3.11 and runs the models' Python; two settings make that
# Python be .venv's, so model.py imports voxline, numpy 2, faster-whisper and piper
# exactly as `voxline serve` does:
# - LD_LIBRARY_PATH: the stub links the first libpython3.11 it finds (Debian's by
#   default), which then loads .venv's base interpreter's standard library, of another
#   patch release, and fails ("'_thread.RLock' object has no attribute
#   '_recursion_count'"); with that interpreter's own lib folder first they match.
#   nvidia_pytriton.libs: the stub's own libraries, found relative to where pip put it.
# - PATH: the stub starts an isolated interpreter (PYTHONPATH and PYTHONHOME are
#   ignored) whose program name is "python3", looked up on PATH; with .venv/bin first it
#   finds .venv/bin/python3 and its pyvenv.cfg, so sys.prefix is .venv: .venv's
#   site-packages and .pth files (the editable voxline install), not the base's.
PYLIB=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
export LD_LIBRARY_PATH="$PYLIB:$DIST/../../nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$PWD/.venv/bin:$PATH"

# gRPC only, on loopback; no HTTP or metrics listeners (nothing reachable from outside).
exec "$DIST/bin/tritonserver" --model-repository "$REPO" \
    --backend-directory "$BACKENDS" --cache-directory "$DIST/caches" \
    --grpc-address 127.0.0.1 --grpc-port "$PORT" \
    --allow-http false --allow-metrics false --allow-gpu-metrics false \
    --pinned-memory-pool-byte-size 0 --exit-on-error true --strict-readiness true \
    --log-verbose 0
