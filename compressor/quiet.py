"""Third-party warnings and library logs go to a log file, not between our own lines (issue 10 §4).

During a run, Python warnings (TracerWarnings from tracing, deprecations) and the records of the libraries we
drive (transformers, optimum, onnx, onnxruntime, torch, accelerate, peft, datasets) are written to
`OUT/logs/compress.log`; `--verbose` shows them on stderr as well. onnxruntime's C++ logger cannot be redirected
from Python, so its threshold is raised to errors for the run (errors still reach the terminal, and every
failure we act on is raised and reported by us anyway). Everything is restored afterwards.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LIBRARIES = ("transformers", "optimum", "onnx", "onnxruntime", "onnxscript", "torch", "accelerate", "peft", "datasets")


_LOCK = threading.Lock()
_ACTIVE: list[logging.Handler] = []  # the log handlers of the runs in progress in this process
_SAVED: dict = {}  # what the first of them found, restored when the last one ends


@contextmanager
def third_party_output(log_file: Path, verbose: bool = False) -> Iterator[Path]:
    """Route third-party warnings and logs to `log_file` (and stderr too when `verbose`) while the block runs.

    Runs may overlap in one process (threads): the first to start saves the loggers' handlers and the warning
    display, each adds and removes only its own file, and the last to end restores what the first found."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    with _LOCK:
        if not _ACTIVE:
            install(verbose)
        _ACTIVE.append(handler)
        for logger in _SAVED["loggers"]:
            logger.addHandler(handler)
    try:
        yield log_file
    finally:
        with _LOCK:
            for logger in _SAVED["loggers"]:
                logger.removeHandler(handler)
            _ACTIVE.remove(handler)
            if not _ACTIVE:
                restore()
        handler.close()


def install(verbose: bool) -> None:
    """Detach the libraries' own handlers (kept when verbose) and send warnings to the active run logs."""
    install_library_handlers()
    # the root logger too: onnxruntime's quantizer logs through `logging.warning`, which would otherwise install a
    # stderr handler on the root logger (basicConfig) the first time it is called
    loggers = [logging.getLogger(name) for name in LIBRARIES] + [logging.getLogger()]
    _SAVED["loggers"] = loggers
    _SAVED["handlers"] = [(logger, list(logger.handlers), logger.propagate) for logger in loggers]
    for logger in loggers:
        if not verbose:
            logger.handlers = []
            logger.propagate = False  # each library logger writes to the run logs itself, once
    shown = warnings.showwarning
    _SAVED["showwarning"] = shown

    def to_logs(message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        for active in list(_ACTIVE):
            active.stream.write(text)
            active.flush()
        if verbose:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = to_logs
    _SAVED["ort_severity"] = quiet_onnxruntime()


def restore() -> None:
    warnings.showwarning = _SAVED["showwarning"]
    for logger, handlers, propagate in _SAVED["handlers"]:
        logger.handlers, logger.propagate = handlers, propagate
    if _SAVED.get("ort_severity") is not None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(_SAVED["ort_severity"])
    _SAVED.clear()


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
    """Raise onnxruntime's default log threshold to errors when a run has loaded it; the threshold to restore.

    Never imported here: a training process (one rank of several) that loads onnxruntime only to set its log level
    was seen to abort at exit ("terminate called without an active exception"). Sessions we open get the same
    threshold through the target's session options."""
    import sys

    onnxruntime = sys.modules.get("onnxruntime")
    if onnxruntime is None:
        return None
    onnxruntime.set_default_logger_severity(3)
    return 2
