"""The per-epoch run log: ``log.jsonl`` (one JSON object per epoch), mirrored to TensorBoard
when the optional ``tensorboard`` package is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wtal.io import InputError, atomic_path, os_error


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or None when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # an optional extra: log.jsonl alone
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _scalars(record: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numeric leaves of a nested log record as ``("loss/fore", value)`` pairs."""
    out = []
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _scalars(value, tag + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
            out.append((tag, float(value)))
    return out


class JsonlLog:
    """``log.jsonl``: one JSON object per epoch. On resume, entries of epochs that are about
    to be re-run are dropped, so the log matches an uninterrupted run. With
    ``tensorboard_dir`` (and tensorboard installed) every numeric entry also goes to
    TensorBoard, at step = epoch."""

    def __init__(self, path: Path, start_epoch: int, tensorboard_dir: Path | None = None):
        self.path = path
        self.tensorboard = _summary_writer(tensorboard_dir) if tensorboard_dir else None
        kept = []
        if path.exists():
            try:
                text = path.read_text()
            except UnicodeDecodeError:  # the log is ASCII JSON: a crash cannot cause this
                raise InputError(path, "cannot read: not UTF-8 text") from None
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if not isinstance(rec, dict):
                    continue  # not a record of ours
                if rec.get("epoch", -1) < start_epoch:
                    kept.append(line)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk: the error has no filename, so name the log
            raise os_error(exc, "cannot write", self.path) from None
        if self.tensorboard is not None:
            for tag, value in _scalars(record):
                self.tensorboard.add_scalar(tag, value, record["epoch"])
            self.tensorboard.flush()
