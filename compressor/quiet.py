"""Third-party warnings and library logs go to a log file, not between our own lines (issue 10 §4).

During a run, Python warnings (TracerWarnings from tracing, deprecations) and the records of the libraries we
drive (transformers, optimum, onnx, onnxruntime, torch, accelerate, peft, datasets) are written to
`OUT/logs/compress.log`; `--verbose` shows them on stderr as well. onnxruntime's C++ logger cannot be redirected
from Python, so its threshold is raised to errors for the run (errors still reach the terminal, and every
failure we act on is raised and reported by us anyway). Everything is restored afterwards.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LIBRARIES = ("transformers", "optimum", "onnx", "onnxruntime", "onnxscript", "torch", "accelerate", "peft", "datasets")


@contextmanager
def third_party_output(log_file: Path, verbose: bool = False) -> Iterator[Path]:
    """Route third-party warnings and logs to `log_file` (and stderr too when `verbose`) while the block runs."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    install_library_handlers()
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    # the root logger too: onnxruntime's quantizer logs through `logging.warning`, which would otherwise install a
    # stderr handler on the root logger (basicConfig) the first time it is called
    loggers = [logging.getLogger(name) for name in LIBRARIES] + [logging.getLogger()]
    saved = [(logger, list(logger.handlers), logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler, *(logger.handlers if verbose else [])]
        logger.propagate = verbose and not logger.handlers[1:]
    shown = warnings.showwarning

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:
        handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))
        handler.flush()
        if verbose:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = to_log
    ort_severity = quiet_onnxruntime()
    try:
        yield log_file
    finally:
        warnings.showwarning = shown
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()
        if ort_severity is not None:
            import onnxruntime

            onnxruntime.set_default_logger_severity(ort_severity)


def install_library_handlers() -> None:
    """transformers and optimum add their stderr handler on first use, which for optimum can be mid-run (a module
    imported by the export): make them add it now, so that it is the one replaced."""
    import importlib

    for module in ("transformers.utils.logging", "optimum.utils.logging"):
        try:
            importlib.import_module(module).get_logger()
        except ImportError:
            continue


def quiet_onnxruntime() -> int | None:
    """Raise onnxruntime's default log threshold to errors; the previous threshold (2, warnings) to restore."""
    try:
        import onnxruntime
    except ImportError:
        return None
    onnxruntime.set_default_logger_severity(3)
    return 2
