"""File I/O shared by every entry point: input errors, atomic writes, JSON.

Standard library and numpy only (``wtal.evaluation`` imports this module and must stay
torch-free).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class InputError(Exception):
    """Bad user input. The CLI prints ``error: <message>`` on one line and exits with 2.

    The message names the file, then (when relevant) the video and field, then what was
    expected: ``InputError("ann.json", "video 'v1': segment 3: end <= start")``.
    """

    def __init__(self, path: str | os.PathLike | None, what: str, video: str | None = None):
        parts = [str(path)] if path is not None else []
        if video is not None:
            parts.append(f"video {video!r}")
        parts.append(what)
        super().__init__(": ".join(parts))
        self.path = path
        self.video = video
        self.what = what


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it; set it right back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or an exception inside the block leaves ``path`` untouched (either the old
    file or nothing), never a partially written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates the file owner-only (0600); give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing file or bad syntax into an :class:`InputError`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        what = f"cannot read as a JSON text file ({exc.__class__.__name__})"
        raise InputError(path, what) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise InputError(path, what) from None
