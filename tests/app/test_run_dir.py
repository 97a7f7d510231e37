"""The run folder's guards (`pd_fast.app.run_dir`), each reached directly rather than through
another guard that fires first: the run lock is exclusive on its own (not only because
`check_free` probes it first) and is released when the run cannot write its config, and the log is
cut back exactly where a resume continues."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from pd_fast.app.run_dir import LOCK_FILE, RunLock, RunLog, lock_holder, open_run

# ----- the run lock ------------------------------------------------------------------------------


def test_a_second_run_lock_on_one_folder_fails_naming_the_holders_pid(tmp_path: Path) -> None:
    first = RunLock(str(tmp_path))
    try:
        with pytest.raises(ValueError, match=rf"in use by another run \(PID {os.getpid()}\)"):
            RunLock(str(tmp_path))
        # the failed attempt neither released the holder's lock nor rewrote its PID
        assert lock_holder(tmp_path / LOCK_FILE) == str(os.getpid())
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        first.release()
    RunLock(str(tmp_path)).release()  # released: the folder can be locked again


def test_the_run_lock_is_exclusive_so_even_a_shared_flock_is_refused(tmp_path: Path) -> None:
    """flock(2) itself says which mode the holder took: a shared lock coexists with another shared
    one and only an exclusive one refuses it."""
    lock = RunLock(str(tmp_path))
    try:
        fd = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lock.release()


def test_a_run_that_cannot_write_its_config_releases_the_lock_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pd_fast.app import checkpoint
    from pd_fast.app.config import config_class, defaults

    cls = config_class("builtin")
    config = cls(**defaults(cls, True))

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        open_run(str(tmp_path / "run"), config, resume=False)
    assert lock_holder(tmp_path / "run" / LOCK_FILE) is None
    assert not (tmp_path / "run" / "config.json").exists()


# ----- the log ---------------------------------------------------------------------------------


def _line(phase: str, iteration: int) -> bytes:
    return (json.dumps({"phase": phase, "iteration": iteration}) + "\n").encode()


def test_drop_phase_cuts_before_the_phases_first_record_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    kept = _line("teacher", 3) + _line("teacher", 6)
    path.write_bytes(kept + _line("distill", 2) + _line("distill", 4))
    log = RunLog(path)
    log.drop_phase("distill")
    log.write({"phase": "distill", "iteration": 2})
    log.close()
    assert path.read_bytes() == kept + _line("distill", 2)


def test_drop_phase_cuts_a_last_record_that_lost_its_newline(tmp_path: Path) -> None:
    """A kill between a record and its newline leaves a line that parses as JSON: it is cut, so
    the next record starts a line of its own instead of being glued onto it."""
    path = tmp_path / "log.jsonl"
    kept = _line("teacher", 3)
    path.write_bytes(kept + _line("teacher", 6)[:-1])
    log = RunLog(path)
    log.drop_phase("distill")
    log.write({"phase": "distill", "iteration": 2})
    log.close()
    assert path.read_bytes() == kept + _line("distill", 2)
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [3, 2]


def test_drop_phase_cuts_at_a_line_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    kept = _line("teacher", 3)
    path.write_bytes(kept + b'{"phase": "tea\n' + _line("teacher", 6))
    log = RunLog(path)
    log.drop_phase("distill")
    log.close()
    assert path.read_bytes() == kept


def test_truncate_drops_what_was_logged_after_the_checkpoint_and_the_log_continues(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = RunLog(path)
    log.write({"phase": "teacher", "iteration": 3})
    at_checkpoint = log.size()
    assert at_checkpoint == len(_line("teacher", 3))
    log.write({"phase": "teacher", "iteration": 6})
    log.close()
    log = RunLog(path)  # the resumed run
    log.truncate(at_checkpoint)
    log.write({"phase": "teacher", "iteration": 4})
    log.close()
    assert path.read_bytes() == _line("teacher", 3) + _line("teacher", 4)
