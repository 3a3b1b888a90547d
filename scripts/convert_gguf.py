"""Convert a GGUF model into a Hugging Face safetensors folder that vLLM can serve (the
same weights as the llama.cpp default, dequantised). Runs in the vLLM environment.

    python scripts/convert_gguf.py MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Loading dequantised the weights; drop the GGUF quantiser and its config, or
    # transformers refuses to save and vLLM would look for GGUF weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
