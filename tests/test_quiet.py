import logging
import warnings

from compressor.quiet import install_library_handlers, third_party_output


def test_warnings_and_library_logs_go_to_the_file_and_are_restored(tmp_path, capsys):
    log = tmp_path / "logs" / "compress.log"
    shown = warnings.showwarning
    install_library_handlers()  # the libraries' own stderr handlers exist before a run, as in a real process
    handlers_before = {name: list(logging.getLogger(name).handlers) for name in ("transformers", "optimum", "")}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with third_party_output(log):
            warnings.warn("a tracer said something", RuntimeWarning, stacklevel=1)
            logging.getLogger("transformers.modeling_utils").warning("a library said something")
        assert warnings.showwarning is shown  # restored on the way out
    err = capsys.readouterr().err
    text = log.read_text()
    assert "a tracer said something" in text and "RuntimeWarning" in text and "a library said something" in text
    assert "said something" not in err
    assert {name: list(logging.getLogger(name).handlers) for name in handlers_before} == handlers_before


def test_verbose_also_shows_them(tmp_path, monkeypatch):
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: seen.append(str(message)))
        with third_party_output(tmp_path / "compress.log", verbose=True):
            warnings.warn("visible", RuntimeWarning, stacklevel=1)
    assert seen == ["visible"] and "visible" in (tmp_path / "compress.log").read_text()


def test_overlapping_runs_each_get_their_log_and_leave_nothing_behind(tmp_path):
    """Two runs in threads of one process may end in either order: no handler of theirs may stay attached."""
    transformers_logger = logging.getLogger("transformers")
    before = list(transformers_logger.handlers)
    first, second = third_party_output(tmp_path / "a.log"), third_party_output(tmp_path / "b.log")
    first.__enter__()
    second.__enter__()
    logging.getLogger("transformers.x").warning("both runs see this")
    first.__exit__(None, None, None)  # the first to start ends first
    logging.getLogger("transformers.x").warning("only the second run sees this")
    second.__exit__(None, None, None)
    assert transformers_logger.handlers == before
    assert "both runs see this" in (tmp_path / "a.log").read_text()
    assert "only the second" not in (tmp_path / "a.log").read_text()
    assert "only the second run sees this" in (tmp_path / "b.log").read_text()
