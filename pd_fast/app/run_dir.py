"""The run folder, for every job: where it is, its lock, its config and the run to resume.

default_out() -> "runs/<date>-<time>-<pid>[-<k>]"   a new folder name, unique on this machine
latest_run() -> the newest run under runs/ (for `--resume` without `--out`), or None
check_out(out, resume)      ValueError unless `out` can be written and is no other program's
check_free(out)             ValueError naming the holder's PID if a run holds the lock of `out`
read_config(out) -> RunConfig   the config.json of the run in `out` (a resume reads this)
RunLock(out)                an exclusive `fcntl.flock` on `out/run.lock`, its PID inside
open_run(out, config, resume) -> RunLock   create the folder, lock it, write config.json

RunLog(path)                the run's log, log.jsonl: one record per logged training iteration,
                            cut back to the checkpoint a resume continues from (rank 0 writes it)
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import time
from pathlib import Path
from typing import Any

from .config import RunConfig, config_from_dict

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"


def default_out() -> str:
    """`runs/<date>-<time>-<pid>[-<k>]`: unique among runs started in the same second on one
    machine (the PID), also by one process (k = 2, 3, ... while the folder exists)."""
    base = os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


def latest_run() -> str | None:
    runs = sorted(
        d for d in glob.glob(os.path.join("runs", "*")) if os.path.isfile(os.path.join(d, CONFIG_FILE))
    )
    return runs[-1] if runs else None


def holds_run(out: str) -> bool:
    """Whether `out` holds a started run (a training state under checkpoints/)."""
    return bool(glob.glob(os.path.join(out, "checkpoints", "*_state.json")))


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def read_config(out: str) -> RunConfig:
    """The config of the run in `out`; ValueError with one line if there is none or it is not one."""
    path = os.path.join(out, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {out} holds no {CONFIG_FILE} (not a pd_fast run)")
    try:
        return config_from_dict(_read_json(path), path)
    except ValueError as err:
        raise ValueError(f"--resume: {err}") from err


def check_out(out: str, resume: bool) -> None:
    """`out` can be created and written, and holds no config.json but a pd_fast run's."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {parent}")
    config = path / CONFIG_FILE
    if not resume and config.is_file():
        try:
            config_from_dict(_read_json(str(config)), str(config))
        except ValueError:
            raise ValueError(
                f"--out {out} holds a config.json that is not a pd_fast run's; choose another --out"
            ) from None


def _in_use(out: str, holder: str) -> ValueError:
    return ValueError(
        f"--out {out} is in use by another run (PID {holder}); wait for it or choose another --out"
    )


def check_free(out: str) -> None:
    """ValueError naming the holder's PID if a run holds the lock of `out`."""
    holder = lock_holder(Path(out) / LOCK_FILE)
    if holder is not None:
        raise _in_use(out, holder)


def lock_holder(path: Path) -> str | None:
    """The PID written in a lock file that another process holds, or None if it is free (or absent)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return None


class RunLock:
    """An exclusive `fcntl.flock` on `<out>/run.lock`, with this process's PID written inside; the
    kernel releases it when the process ends, however it ends."""

    def __init__(self, out: str) -> None:
        self.path = Path(out) / LOCK_FILE
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise _in_use(out, holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_run(out: str, config: RunConfig, resume: bool) -> RunLock:
    """Create the run folder, take its lock and (for a new run) write config.json; rank 0 only,
    after every check has passed."""
    from .checkpoint import save_json

    os.makedirs(out, exist_ok=True)
    lock = RunLock(out)
    try:
        if not resume:
            save_json(os.path.join(out, CONFIG_FILE), config.to_dict())
    except BaseException:
        lock.release()
        raise
    return lock


class RunLog:
    """The run's log, `log.jsonl`: append-only JSON lines, flushed after every record, cut back to
    the checkpoint a resume continues from; written by rank 0 only (`path` None: nowhere)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def drop_phase(self, phase: str) -> None:
        """Cut the log before its first record of `phase` (or its first partial line): a stage
        starting afresh continues the records of the stages before it."""
        if self.file is None:
            return
        self.file.flush()
        size = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if not line.endswith(b"\n") or not isinstance(record, dict) or record.get("phase") == phase:
                    break
                size += len(line)
        self.truncate(size)

    def truncate(self, size: int) -> None:
        """Drop what was logged after the checkpoint we resume from, so the log continues."""
        if self.file is not None and os.path.getsize(self.path) > size:
            self.file.flush()
            os.truncate(self.path, size)
            self.file.seek(0, os.SEEK_END)

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def size(self) -> int:
        if self.file is None:
            return 0
        self.file.flush()
        os.fsync(self.file.fileno())
        return os.path.getsize(self.path)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
