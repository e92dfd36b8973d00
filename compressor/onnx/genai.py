"""`genai_config.json` beside a shipped causal-LM ONNX file, so ONNX Runtime GenAI runs it (issue 14 §5).

`onnxruntime_genai.Model(OUT/onnx)` reads this file to learn which graph to load, the names of its inputs and
outputs (Optimum's: `past_key_values.%d.key` in, `present.%d.key` out), the KV-cache shape and the special
tokens. Optimum's graph grows its cache by concatenation, so `past_present_share_buffer` must be false (a
shared buffer needs a graph built for a fixed-size cache, as GenAI's own builder makes). The tokenizer files
Optimum copied into the folder are what GenAI's tokenizer reads.
"""

from __future__ import annotations

import json
from pathlib import Path

PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"


def first_id(value) -> int | None:
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def genai_config(onnx_file: Path, config, adapter, generation=None) -> dict | None:
    """The GenAI configuration for `onnx_file` (a with-past decoder), or None when GenAI has no such model type."""
    import onnx

    model_type = adapter.genai_model_type(config)
    if model_type is None:
        return None
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    if "input_ids" not in inputs or "logits" not in outputs or PAST_KEY % 0 not in inputs:
        return None
    heads, kv_heads, head_size = adapter.attention_shape(config)
    names_in = {"input_ids": "input_ids", "past_key_names": PAST_KEY, "past_value_names": PAST_VALUE}
    names_in.update({name: name for name in ("attention_mask", "position_ids") if name in inputs})
    bos = first_id(getattr(generation, "bos_token_id", None) or config.bos_token_id)
    eos = first_id(getattr(generation, "eos_token_id", None) or config.eos_token_id)
    pad = first_id(getattr(config, "pad_token_id", None))
    context = int(getattr(config, "max_position_embeddings", 2048))
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": onnx_file.name,
                "head_size": head_size,
                "hidden_size": int(config.hidden_size),
                "inputs": names_in,
                "outputs": {"logits": "logits", "present_key_names": PRESENT_KEY, "present_value_names": PRESENT_VALUE},
                "num_attention_heads": heads,
                "num_hidden_layers": int(config.num_hidden_layers),
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos,
            "type": model_type,
            "vocab_size": int(config.vocab_size),
        },
        "search": {
            "do_sample": False,
            "early_stopping": True,
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(onnx_dir: Path, deploy_file: str, config, adapter, generation=None) -> dict:
    """Write `genai_config.json` for the deploy file; what happened, for the report."""
    from compressor.fs import write_atomically

    content = genai_config(onnx_dir / deploy_file, config, adapter, generation)
    if content is None:
        return {"written": False, "reason": f"ONNX Runtime GenAI does not run {config.model_type} graphs like this one"}
    write_atomically(onnx_dir / "genai_config.json", json.dumps(content, indent=2) + "\n")
    return {"written": True, "file": "genai_config.json", "model_file": deploy_file, "type": content["model"]["type"]}


def retarget_genai_config(onnx_dir: Path, deploy_file: str) -> dict:
    """Point the GenAI builder's own `genai_config.json` (tuned for its graph) at the deploy file."""
    from compressor.fs import write_atomically

    path = onnx_dir / "genai_config.json"
    content = json.loads(path.read_text())
    content["model"]["decoder"]["filename"] = deploy_file
    write_atomically(path, json.dumps(content, indent=2) + "\n")
    return {"written": True, "file": path.name, "model_file": deploy_file, "type": content["model"]["type"]}
