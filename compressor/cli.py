"""The `compress` command (DESIGN §6): model, inspect, pass, export, eval.

Exit codes: 0 success; 2 bad input (one line naming the input and the problem, no traceback); 3 a gate
failed; 1 anything else. Heavy libraries load inside the commands, so `compress --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from compressor.errors import GateError, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compressor: teacher checkpoint -> smaller, validated, deployable student.",
)

Target = Annotated[str, typer.Option("--target", "-t", help="deployment target: cpu, gpu or edge")]
Verbose = Annotated[
    bool, typer.Option("--verbose", help="show third-party warnings and logs on stderr too (always in OUT/logs/)")
]


@app.command()
def model(
    teacher: Annotated[
        str | None, typer.Argument(help="teacher model directory; default: packaged all-MiniLM-L6-v2")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="cpu, gpu or edge (default cpu)")] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            help="student size: a parameter share (0.5), params=60M, flops=0.5, layers=0.5, or latency=5ms "
            "(batch-1 latency measured on the target)"
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="training text; default: built-in English corpus")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="held-out text; default: 10% of --data")] = None,
    sts: Annotated[str | None, typer.Option(help="STS-B-style TSV for encoder Spearman")] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="column or field holding the text (.csv/.tsv/.jsonl, datasets)")
    ] = None,
    recipe: Annotated[str | None, typer.Option(help="recipe YAML/JSON; flags override its keys")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="output directory")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    steps: Annotated[int | None, typer.Option(help="distillation steps (overrides the recipe)")] = None,
    train_tokens: Annotated[
        str | None, typer.Option("--train-tokens", help="training budget in tokens: 2000000, 500k, 12.3M")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option("--time-budget", help="training time budget: 90s, 30m, 1.5h")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N]")] = None,
    cache_dir: Annotated[
        str | None, typer.Option(help="pass cache (default $COMPRESSOR_CACHE or ~/.cache/compressor)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not read or write the pass cache")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="allow the teacher's own Python code to run")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    verbose: Verbose = False,
    no_bench: Annotated[
        bool, typer.Option("--no-bench", help="skip the quick teacher-vs-student speed measurement")
    ] = False,
) -> None:
    """Compress TEACHER into a student for a target: OUT/{student, onnx, report.json, REPORT.md}."""
    from compressor.api import ModelRequest, compress_model

    report = compress_model(
        ModelRequest(
            teacher=teacher,
            target=target,
            budget=budget,
            data=data,
            eval_data=eval_data,
            sts=sts,
            text_column=text_column,
            recipe=recipe,
            out=out,
            overwrite=overwrite,
            steps=steps,
            train_tokens=train_tokens,
            time_budget=time_budget,
            seed=seed,
            device=device,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            trust_remote_code=trust_remote_code,
            show_progress=not quiet,
            bench=not no_bench,
            verbose=verbose,
        )
    )
    summarize(report)


def quality_line(figures: dict) -> str:
    """`perplexity 7.77, top-1 agreement 0.285` — names and units, not a Python dict."""
    parts = []
    for name, value in figures.items():
        label = name.replace("_", " ")
        parts.append(f"{label} {value:.4g}" if isinstance(value, float) else f"{label} {value}")
    return ", ".join(parts) or "—"


def summarize(report: dict) -> None:
    """The closing summary: sizes, quality teacher -> student, measured speed, the deploy file, the report."""
    from rich.console import Console

    console = Console(soft_wrap=True)  # a path is read, and copied, as one line
    t, s, q = report["teacher"], report["student"], report["quality"]
    console.print(f"[bold green]done[/] in {report['wall_seconds']} s")
    console.print(
        f"size: {t['params']:,} -> {s['params']:,} parameters ({report['ratios']['params']}x), "
        f"FLOPs/token {report['ratios']['flops_per_token']}x"
    )
    console.print(f"quality, teacher: {quality_line(q['teacher'])}")
    console.print(f"quality, student: {quality_line(q['student'])} (retention {q['retention']})")
    speed = report.get("speed") or {}
    if speed.get("measured"):
        up, t, s = speed["speedup"], speed["teacher"], speed["student"]
        console.print(
            f"speed ({speed['target']}, measured here): {up['latency']}x faster at batch 1 "
            f"({t['latency']['p50_ms']} -> {s['latency']['p50_ms']} ms), {up['throughput']}x throughput"
            + (f", {up['per_token']}x per token" if "per_token" in up else "")
            + f"; FLOPs alone predict {speed['flops_speedup']}x"
        )
        decode = speed.get("decode")
        if decode:
            shipped = decode.get("student_shipped") or decode["student_fp32"]
            console.print(
                f"decoding: {decode['teacher']['decode_tokens_per_s']} -> {shipped['decode_tokens_per_s']} tokens/s "
                f"(batch 1, prompt {shipped['prompt_tokens']}, {shipped['new_tokens']} new tokens)"
            )
    elif speed:
        console.print(f"speed: not measured ({speed.get('reason')})")
    onnx, deployment = report.get("onnx"), report.get("deployment") or {}
    if onnx:
        deploy = deployment.get("deploy_file") or "model.onnx"
        size = next(
            (v.get("bytes") for v in deployment.get("quantization_tried") or [] if v.get("file") == deploy), None
        )
        size = size or onnx.get("onnx_bytes")
        console.print(
            f"deploy: {report['output']}/onnx/{deploy}"
            + (f" ({size / 1e6:.1f} MB)" if size else "")
            + f"; ONNX validation {'passed' if onnx['passed'] else 'FAILED'} (max abs diff {onnx['max_abs_diff']:.3g})"
        )
    if report["cached_passes"]:
        console.print(f"cached passes: {', '.join(report['cached_passes'])}")
    console.print(f"report: {report['output']}/REPORT.md; library warnings: {report['output']}/logs/compress.log")


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="model directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    graph: Annotated[
        str | None, typer.Option(help="also draw the data-flow graph and its coupled groups to this PNG file")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --graph file")] = False,
) -> None:
    """Print the IR summary: params, bytes, FLOPs/token and a per-block table (and the graph as a picture)."""
    from compressor.api import inspect_model

    summary = inspect_model(path, graph, overwrite)
    if graph:
        groups = summary["graph"]["groups"]
        kinds = sorted({name.rsplit(".", 1)[-1] if name.startswith("layer.") else name for name in groups})
        print(f"graph: {graph} ({len(groups)} coupled groups: {', '.join(kinds)})", file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path}")
    for column in ("block", "kind", "params", "bytes", "FLOPs/token"):
        table.add_column(column, justify="right" if column not in ("block", "kind") else "left")
    for row in summary["blocks"]:
        table.add_row(
            row["block"], row["kind"], f"{row['params']:,}", f"{row['bytes']:,}", f"{row['flops_per_token']:,}"
        )
    totals = summary["totals"]
    table.add_row(
        "total",
        totals["model_type"],
        f"{totals['params']:,}",
        f"{totals['bytes']:,}",
        f"{totals['flops_per_token']:,}",
        style="bold",
    )
    Console().print(table)


@app.command("pass")
def run_pass(
    name: Annotated[str, typer.Argument(help="pass name: inherit, distill, export")],
    source: Annotated[str, typer.Option("--in", help="input model directory")],
    out: Annotated[str, typer.Option("--out", "-o", help="output directory")],
    assignments: Annotated[list[str] | None, typer.Option("--set", help="config key=value (repeatable)")] = None,
    teacher: Annotated[str | None, typer.Option(help="teacher directory; default: the one in compressor.json")] = None,
    data: Annotated[str | None, typer.Option(help="data file; default: built-in corpus")] = None,
    target: Target = "cpu",
    budget: Annotated[
        str | None, typer.Option(help="a parameter share (0.5), params=60M, flops=0.5, layers=0.5 or latency=5ms")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    verbose: Verbose = False,
) -> None:
    """Run one pass on one model directory (for CI/CD); prints the pass's metrics as JSON."""
    from compressor.api import run_pass as api_run_pass

    summary = api_run_pass(
        name,
        source,
        out,
        assignments,
        teacher,
        data,
        target,
        budget,
        overwrite,
        seed,
        device,
        use_cache=not no_cache,
        show_progress=not quiet,
        verbose=verbose,
    )
    print(json.dumps(summary, indent=2, default=str))


@app.command()
def export(
    path: Annotated[str, typer.Argument(help="student (or any supported) model directory")],
    target: Target = "cpu",
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="ONNX output directory; default: PATH-onnx-TARGET")
    ] = None,
    data: Annotated[str | None, typer.Option(help="text for the validation gate; default: built-in corpus")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    verbose: Verbose = False,
) -> None:
    """Export a model directory to validated ONNX for a target (library output goes to OUT/logs/compress.log)."""
    from compressor.api import run_pass as api_run_pass

    destination = out or f"{path.rstrip('/')}-onnx-{target}"
    summary = api_run_pass(
        "export", path, destination, [], None, data, target, None, overwrite, show_progress=not quiet, verbose=verbose
    )
    print(json.dumps(summary, indent=2, default=str))


@app.command("eval")
def evaluate(
    student: Annotated[str, typer.Argument(help="student model directory")],
    teacher: Annotated[str | None, typer.Option(help="teacher directory; default: the one in compressor.json")] = None,
    data: Annotated[str | None, typer.Option(help="text file (its held-out 10% is used); default: built-in")] = None,
    sts: Annotated[str | None, typer.Option(help="STS-B-style TSV (encoders)")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Student vs teacher: perplexity and top-1 agreement (LMs), embedding cosine and STS Spearman (encoders)."""
    from compressor.api import evaluate_models

    print(json.dumps(evaluate_models(student, teacher, data, sts, device), indent=2))


@app.command()
def bench(
    teacher: Annotated[str, typer.Argument(help="teacher model directory")],
    student: Annotated[str, typer.Argument(help="`compress model` output folder, or a student model directory")],
    target: Target = "cpu",
    out: Annotated[str | None, typer.Option("--out", "-o", help="results folder (needed for a plain student)")] = None,
    runs: Annotated[int, typer.Option(min=3, help="timed runs per figure")] = 20,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    verbose: Verbose = False,
) -> None:
    """Teacher (PyTorch eager, ONNX) vs student (ONNX fp32, quantized): latency, throughput, FLOPs ratio."""
    from compressor.benchmark import bench as api_bench

    result = api_bench(teacher, student, target, out, runs, overwrite, not quiet, verbose)
    print(json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes with one clear line on stderr."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="compress", standalone_mode=False)
    except UserError as exc:
        print(f"compress: error: {one_line(str(exc), 600)}", file=sys.stderr)
        return 2
    except GateError as exc:
        print(f"compress: gate failed: {exc}", file=sys.stderr)
        return 3
    except typer.Abort:
        print("compress: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # typer's own click: usage errors and bad parameters
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"compress: error: {message}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # anything else is our bug or the environment's: say what, keep it short
        if os.environ.get("COMPRESSOR_DEBUG"):
            raise
        from compressor.fs import free_space, is_disk_full

        if is_disk_full(exc):
            where = visible_path(getattr(exc, "filename", None)) or "the output or cache folder"
            print(
                f"compress: error: no space left on device writing {where} ({free_space(where)} free)", file=sys.stderr
            )
            return 2
        print(
            f"compress: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            "(set COMPRESSOR_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


def visible_path(path: str | None) -> str | None:
    """The folder a user knows for a path inside one of our hidden build folders (`.NAME.partial-*`)."""
    if not path:
        return None
    parts = []
    for part in str(path).split(os.sep):
        if ".partial-" in part and part.startswith("."):
            parts.append(part[1 : part.index(".partial-")])
            break
        parts.append(part)
    return os.sep.join(parts)


def one_line(message: str, limit: int = 300) -> str:
    """The first line of a message, cut to `limit` characters: errors are read, not scrolled."""
    first = (message.strip().splitlines() or [""])[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
