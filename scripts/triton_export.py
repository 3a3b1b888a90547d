"""Export Voxline's STT and TTS models into a Triton Inference Server model repository.

Per model, named as its folder in models/:
    OUT/NAME/config.pbtxt        inputs, outputs, max_batch_size, dynamic batching
    OUT/NAME/1/model.py          Triton's Python backend running Voxline's own engine
    OUT/NAME/1/manifest.yaml     the model's manifest (local weight paths made absolute)

    .venv/bin/python scripts/triton_export.py [OUT] [--config voxline.yaml]
        [--stt NAME] [--tts NAME] [--max-batch 8] [--queue-delay-us 5000] [--instances 1]

By default the STT and TTS models the config selects (whisper-tiny-en and piper-joe);
a `triton` manifest (whisper-tiny-en-triton) stands for the model it names. Each engine
is loaded once here, so a repository that exports also loads in Triton. Serve it with
scripts/triton_server.sh [PORT] OUT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

from voxline.config import load_settings
from voxline.engines.base import TTSEngine
from voxline.engines.repository import ModelError, read_manifest
from voxline.engines.triton_backend import load_engine, stt_config, tts_config

DEFAULT_OUT = Path(os.environ.get("VOXLINE_CACHE") or Path.home() / ".cache" / "voxline"
                   ) / "triton-models"

MODEL_PY = '''"""Triton Python-backend model: Voxline's {kind} engine, built from manifest.yaml
beside this file (written by scripts/triton_export.py; see voxline.engines.triton_backend).
The interpreter running it must have voxline installed (scripts/triton_server.sh runs
it as .venv's)."""

from voxline.engines.triton_backend import {cls} as TritonPythonModel  # noqa: F401
'''


def source_model(models_dir: Path, name: str) -> str:
    """The model a selection stands for: a `triton` manifest names the one it serves."""
    manifest = read_manifest(models_dir / name)
    return str(manifest.options.get("model", name)) if manifest.engine == "triton" else name


def frozen_manifest(folder: Path) -> str:
    """The manifest's text with a local weights path made absolute (the copy lives in
    the Triton repository, not beside the weights)."""
    data = yaml.safe_load((folder / "manifest.yaml").read_text())
    source = data.get("source") or {}
    if not source.get("package"):
        source["path"] = str((folder / source.get("path", ".")).resolve())
        data["source"] = source
    return yaml.safe_dump(data, sort_keys=False)


def export(models_dir: Path, name: str, kind: str, out: Path, max_batch: int,
           queue_delay_us: int, instances: int) -> Path:
    folder = models_dir / name
    engine = load_engine(folder, kind)  # the same factory voxline serve uses
    try:
        if kind == "stt":
            config = stt_config(name, max_batch, queue_delay_us, instances)
        else:
            assert isinstance(engine, TTSEngine)
            config = tts_config(name, max_batch, queue_delay_us, engine.sample_rate, instances)
    finally:
        engine.close()
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    (target / "1").mkdir(parents=True)
    (target / "config.pbtxt").write_text(config)
    (target / "1" / "manifest.yaml").write_text(frozen_manifest(folder))
    cls = "STTModel" if kind == "stt" else "TTSModel"
    (target / "1" / "model.py").write_text(MODEL_PY.format(kind=kind.upper(), cls=cls))
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT,
                    help=f"model repository folder (default {DEFAULT_OUT})")
    ap.add_argument("--config", type=Path, help="Voxline config whose models to export")
    ap.add_argument("--stt", help="STT model (a folder in models/) instead of the config's")
    ap.add_argument("--tts", help="TTS model (a folder in models/) instead of the config's")
    ap.add_argument("--max-batch", type=int, default=8,
                    help="max_batch_size: utterances per model run (default 8)")
    ap.add_argument("--queue-delay-us", type=int, default=5000,
                    help="dynamic batcher's max_queue_delay_microseconds (default 5000)")
    ap.add_argument("--instances", type=int, default=1,
                    help="model instances (stub processes) per model (default 1)")
    args = ap.parse_args(argv)
    settings = load_settings(args.config)
    models_dir = Path(settings.models_dir)
    try:
        for kind, chosen in (("stt", args.stt or settings.models.stt),
                             ("tts", args.tts or settings.models.tts)):
            name = source_model(models_dir, chosen)
            target = export(models_dir, name, kind, args.out, args.max_batch,
                            args.queue_delay_us, args.instances)
            print(f"exported {kind} model {name} to {target}")
    except ModelError as exc:
        print(f"triton_export: {exc}", file=sys.stderr)
        return 2
    print(f"serve it with: scripts/triton_server.sh 8001 {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
