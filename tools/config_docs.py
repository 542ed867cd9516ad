"""The configuration reference in Markdown, generated from the config dataclasses.

``python -m tools.config_docs`` rewrites the block between the config-docs markers of
``docs/configuration.md`` in place; ``--check`` only reports whether it is current (exit 1 when
not). The dataclasses and the docstrings written under their fields are the one source; the page
never holds a hand-edited copy.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
import typing
from pathlib import Path

from wtal.config import Config, config_to_dict
from wtal.io import InputError, atomic_path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
START, END = "<!-- config-docs:start -->", "<!-- config-docs:end -->"


def _field_docs(cls: type) -> tuple[str, dict[str, tuple[str, str]]]:
    """``(class docstring, {field: (annotation text, docstring)})`` of one dataclass, from the
    docstrings written under its fields. Reads the class's own source, so it does not matter
    which module defines it."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef) and node.name == cls.__name__, cls
    fields: dict[str, tuple[str, str]] = {}
    body = node.body
    for stmt, after in zip(body, [*body[1:], None], strict=True):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            doc = ""
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                doc = str(after.value.value)
            fields[stmt.target.id] = (ast.unparse(stmt.annotation), doc)
    return ast.get_docstring(node) or "", fields


def _markdown_text(doc: str) -> str:
    """One Markdown table cell from a docstring: one line, RST roles and literals as code."""
    text = " ".join(doc.split())
    text = re.sub(r":\w+:(`[^`]+`)", r"\1", text).replace("``", "`")
    return text.replace("|", "\\|")


def config_markdown() -> str:
    """The configuration reference: one table per section of :class:`wtal.config.Config` (key,
    type, default, description), generated from the section dataclasses and the docstrings
    under their fields. docs/configuration.md embeds it (a test keeps the two equal)."""
    hints = typing.get_type_hints(Config)
    defaults = config_to_dict(Config())
    modules = sorted({f"`{cls.__module__}`" for cls in [Config, *hints.values()]})
    lines = [
        f"Generated from the docstrings of the config dataclasses ({', '.join(modules)}) by",
        "`python -m tools.config_docs`, which rewrites this block: edit the docstrings, then",
        "rerun it. Defaults are YAML (JSON) values.",
    ]
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        class_doc, field_docs = _field_docs(cls)
        lines += ["", f"### `{section.name}`", ""]
        if class_doc:
            lines += [_markdown_text(class_doc.split("\n\n")[0]), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            annotation, doc = field_docs[f.name]
            default = json.dumps(defaults[section.name][f.name])
            annotation = annotation.replace("|", "\\|")  # GFM: a bare | splits the cell
            lines.append(
                f"| `{section.name}.{f.name}` | `{annotation}` | `{default}` | "
                f"{_markdown_text(doc)} |"
            )
    return "\n".join(lines) + "\n"


def embedded(text: str, path: Path) -> str:
    """The block between the config-docs markers of ``text`` (read from ``path``)."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{path}: expected one {START} line followed by one {END} line")
    return text.split(START)[1].split(END)[0]


def render(text: str, path: Path) -> str:
    """``text`` with the block between the markers replaced by :func:`config_markdown`."""
    old = embedded(text, path)
    return text.replace(f"{START}{old}{END}", f"{START}\n{config_markdown()}{END}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.config_docs", description=__doc__)
    parser.add_argument("page", nargs="?", type=Path, default=PAGE, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    try:
        text = args.page.read_text(encoding="utf-8")
        new = render(text, args.page)
        if new == text:
            return 0
        if args.check:
            print(f"{args.page}: the config reference is stale: run python -m tools.config_docs")
            return 1
        with atomic_path(args.page) as tmp:
            tmp.write_text(new, encoding="utf-8")
    except (OSError, ValueError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.page}: config reference rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
