"""Decode speed of several causal-LM ONNX files, interleaved round by round so that drift on a shared machine hits
them all alike: greedy generation with the KV cache at batch 1 (prompt 128, 128 new tokens, median of 3 per
round), ONNX Runtime on the cpu target's provider and threads, IO binding.

Prints one JSON object: per-file rates per round, medians, and every file's median over the first file's.

    python benchmarks/decode_ab.py optimum_fp32=OUT1/onnx/model.onnx shipped=OUT/onnx/model_int8w.onnx --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="NAME=PATH of an ONNX with-past decoder; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: from the config.json beside the file)")
    args = parser.parse_args()

    import numpy as np

    from compressor.onnx.check import open_session
    from compressor.onnx.decode import onnx_decode_speed
    from targets import get_target

    target = get_target("cpu")
    files = dict(item.split("=", 1) for item in args.files)
    first = Path(next(iter(files.values())))
    vocab = args.vocab or json.loads((first.parent / "config.json").read_text())["vocab_size"]
    sessions = {
        name: open_session(Path(path), target.available_providers(), target.session_options())
        for name, path in files.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in files}
    for round_ in range(args.rounds):
        for name, session in sessions.items():
            rates[name].append(onnx_decode_speed(session, vocab)["decode_tokens_per_s"])
        print(f"round {round_}: { ({name: r[-1] for name, r in rates.items()}) }", file=sys.stderr, flush=True)
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    baseline = next(iter(files))
    json.dump(
        {
            "runtime": "onnxruntime CPUExecutionProvider, IO binding; batch 1, prompt 128, 128 new tokens",
            "rounds": args.rounds,
            "decode_tokens_per_s": rates,
            "median": medians,
            f"median_over_{baseline}": {name: round(m / medians[baseline], 3) for name, m in medians.items()},
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
