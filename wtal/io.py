"""File I/O shared by every entry point: input errors, atomic writes, JSON.

Standard library and numpy only (``wtal.evaluation`` imports this module and must stay
torch-free).
"""

from __future__ import annotations

import errno
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


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
"""Errors that only a write can cause: the fallback message then says ``cannot write``."""


def os_error(
    exc: OSError, what: str | None = None, path: str | os.PathLike | None = None
) -> InputError:
    """An :class:`InputError` for an ``OSError``: ``<path>: <what> (<strerror>)``.

    Args:
        exc: the error; its ``filename`` names the path unless ``path`` is given.
        what: what went wrong (default: ``cannot write`` for a full or read-only disk,
            ``not found`` for a missing file, else ``cannot access``).
        path: the path to name, when the user knows it by another name than ``exc.filename``
            (e.g. the destination of an atomic write rather than its temporary file).
    """
    if what is None:
        if exc.errno in _WRITE_ERRNOS:
            what = "cannot write"
        elif exc.errno == errno.ENOENT:
            what = "not found"
        else:
            what = "cannot access"
    reason = exc.strerror or exc.__class__.__name__
    return InputError(path if path is not None else exc.filename, f"{what} ({reason})")


def _nearest_existing(path: Path) -> Path | None:
    """``path`` or its closest ancestor that exists (None if none does)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _check_writable_under(path: Path) -> None:
    """The folders that ``path`` needs can be created: the closest existing ancestor is a
    writable folder (a file there, or a read-only folder, would fail only after the work)."""
    ancestor = _nearest_existing(path.parent) or Path.cwd()
    if not ancestor.is_dir():
        raise InputError(path, f"cannot create it: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write into {ancestor} (permission denied)")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """The output file ``path`` (given by the option ``flag``), checked before any work: not
    empty, not a folder, and under a writable folder (missing folders are created on write).
    """
    if not str(path).strip():
        raise InputError(None, f"{flag}: expected a file path, got {str(path)!r}")
    out = Path(path).expanduser()
    if out.is_dir():
        raise InputError(out, "is a folder; expected a file path")
    _check_writable_under(out)
    return out


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """The output folder ``path`` (given by the option ``flag``), checked before any work:
    not empty, not an existing file, and creatable (or, if it exists, writable)."""
    if not str(path).strip():
        raise InputError(None, f"{flag}: expected a folder path, got {str(path)!r}")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; expected a folder")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(out, "cannot write into it (permission denied)")
    else:
        _check_writable_under(out)
    return out


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it; set it right back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or an exception inside the block leaves ``path`` untouched (either the old
    file or nothing), never a partially written file. Missing parent folders are created.

    Raises:
        InputError: the file cannot be written (full disk, read-only or missing folder, a
            folder at ``path``): ``<path>: cannot write (<strerror>)``, temporary file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"cannot create its folder {path.parent}", path) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, "cannot write", path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates the file owner-only (0600); give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        # Errors writing the temporary file (a full disk has no filename) or renaming it are
        # errors writing `path`; an OSError about another file propagates unchanged.
        if exc.filename is not None and os.fspath(exc.filename) != os.fspath(tmp_path):
            raise
        raise os_error(exc, "cannot write", path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing file, bad syntax or a key given twice in one object
    into an :class:`InputError`."""
    data, duplicates = read_json_with_duplicates(path)
    if duplicates:
        raise InputError(path, f"key {duplicates[0]!r} appears twice in one object")
    return data


def read_json_with_duplicates(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """Read a JSON file and list the keys given twice in one object (``json`` keeps the last
    silently: a video's entry would vanish), each once per object, in the order their repeats
    come; a missing file or bad syntax is an :class:`InputError`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise os_error(exc, "cannot read", path) from None
    except UnicodeDecodeError:
        raise InputError(path, "cannot read: not UTF-8 text") from None
    duplicates: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            repeats = [k for k, _ in pairs if k in seen or seen.add(k)]
            duplicates.extend(dict.fromkeys(repeats))
        return obj

    try:
        return json.loads(text, object_pairs_hook=pairs_hook), duplicates
    except json.JSONDecodeError as exc:
        what = f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise InputError(path, what) from None
