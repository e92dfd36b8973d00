"""One run per pass key: a second holder waits or times out; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import threading
import time

import pytest

from compressor.errors import UserError
from compressor.locks import TIMEOUT_ENV, run_lock


def test_a_second_holder_times_out_with_exit_2_naming_the_holder(tmp_path, monkeypatch):
    lock = tmp_path / "locks" / "key.lock"
    monkeypatch.setenv(TIMEOUT_ENV, "0.3")
    with run_lock(lock):
        with pytest.raises(UserError, match=rf"another run \(pid {os.getpid()}\)"):
            with run_lock(lock):
                pass


def test_a_second_holder_waits_for_the_first_and_says_so(tmp_path):
    lock = tmp_path / "key.lock"
    order, said = [], []
    held = threading.Event()

    def first():
        with run_lock(lock):
            held.set()
            time.sleep(0.6)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait()
    with run_lock(lock, on_wait=said.append):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert len(said) == 1 and "waiting for another run" in said[0]


def test_the_lock_file_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    lock = tmp_path / "key.lock"
    lock.write_text("999999\n")  # left behind by a killed run: nobody holds the flock any more
    monkeypatch.setenv(TIMEOUT_ENV, "0")
    with run_lock(lock):
        assert lock.read_text().strip() == str(os.getpid())


def test_a_bad_timeout_setting_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(UserError, match=TIMEOUT_ENV):
        with run_lock(tmp_path / "key.lock"):
            pass
