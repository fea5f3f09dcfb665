"""One process per run directory (and per campaign folder): an advisory `flock` on `DIR/.lock`.

The kernel drops the lock when its holder dies (even by SIGKILL), so a crashed run never leaves
a stale lock behind: the file stays, naming a dead pid, and the next process takes it at once.
The pid written in the file only serves the error message.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from llmlab.errors import LLMLabError

LOCK_FILE = ".lock"


class RunDirBusy(LLMLabError):
    """Another process is training in this run directory."""


class RunLock:
    """`with RunLock(run_dir):` -- raises RunDirBusy at once when another process holds it.
    `what` names the folder in that message ("campaign folder" for `llmlab campaign`), `hint`
    ends it with what to do."""

    def __init__(self, run_dir: Path, what: str = "run directory", hint: str = "") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.what, self.hint = what, hint
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunDirBusy(f"{self.what} {self.path.parent} is in use by {holder}{self.hint}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
