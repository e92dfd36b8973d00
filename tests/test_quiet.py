import logging
import warnings

from compressor.quiet import third_party_output


def test_warnings_and_library_logs_go_to_the_file_and_are_restored(tmp_path, capsys):
    log = tmp_path / "logs" / "compress.log"
    shown = warnings.showwarning
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
    assert logging.getLogger("transformers").handlers == [] or all(
        not isinstance(h, logging.FileHandler) for h in logging.getLogger("transformers").handlers
    )


def test_verbose_also_shows_them(tmp_path, monkeypatch):
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: seen.append(str(message)))
        with third_party_output(tmp_path / "compress.log", verbose=True):
            warnings.warn("visible", RuntimeWarning, stacklevel=1)
    assert seen == ["visible"] and "visible" in (tmp_path / "compress.log").read_text()
