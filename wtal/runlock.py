"""One writer per run folder: an advisory lock held while a run trains.

Two processes training into one folder (a ``--resume`` started while the run is still going,
two ``wtal bench`` on one ``--out``) would interleave their checkpoints and log records. The
lock is ``fcntl.flock`` on ``RUN_DIR/wtal.lock``: the kernel drops it when its holder exits,
however it exits (SIGKILL included), so a crashed run never leaves a stale lock behind. The
file stays in the folder and holds the pid of its last holder, for the refusal message.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from wtal.io import InputError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no advisory locks, runs are not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "wtal.lock"
"""Name of the lock file inside a run folder."""


class RunLock:
    """Exclusive, non-blocking lock of one run folder, for the lifetime of a ``with`` block.

    Entering takes the lock if the folder exists (a run to resume); a new run calls
    :meth:`acquire` once it has created its folder, so that bad input still leaves nothing.

    Args:
        folder: the run folder.
        active: False makes every call a no-op (the non-zero ranks of a distributed run,
            whose rank 0 holds the lock).

    Raises:
        InputError: on acquiring, when another process holds the lock; the message names the
            folder and that process's pid.
    """

    def __init__(self, folder: str | os.PathLike, *, active: bool = True) -> None:
        self.folder = Path(folder)
        self.active = active and fcntl is not None
        self._fd: int | None = None
        self._before: bytes | None = None  # the lock file's bytes before this process took it

    def acquire(self) -> None:
        """Take the lock (idempotent); the folder must exist."""
        if not self.active or self._fd is not None:
            return
        path = self.folder / LOCK_FILE
        existed = path.is_file()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            what = f"in use by another wtal process (pid {holder}); wait for it to end or stop it"
            raise InputError(self.folder, what) from None
        except BaseException:
            os.close(fd)
            raise
        self._before = os.pread(fd, 64, 0) if existed else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _undo(self) -> None:
        """After a failed run: the lock file as it was before (or gone, if this process made
        it), so that a refused command leaves an existing run folder byte for byte unchanged.
        Called while still holding the lock."""
        assert self._fd is not None
        if self._before is None:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self._before, 0)

    def release(self) -> None:
        """Drop the lock (idempotent). The file is kept: removing it would let a process that
        opened it just before lock a file no longer in the folder."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        if self.folder.is_dir():
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self._fd is not None:
            self._undo()
        self.release()
