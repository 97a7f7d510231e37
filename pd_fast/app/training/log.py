"""The run's log, `out_dir/log.jsonl`: one JSON record per `log_every` iterations, cut back to a
checkpoint on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class _Log:
    """Append-only JSON-lines log, flushed after every record; written by rank 0 only."""

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
