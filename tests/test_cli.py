import ast
import subprocess
import sys
from pathlib import Path

import wtal

COMMANDS = (
    "data", "score", "train", "detect", "postprocess", "plot", "demo", "export-pseudo",
    "plot-pseudo", "bench",
)  # fmt: skip


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "wtal", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in COMMANDS:
        assert f"\n    {command}" in out, command


def test_the_library_never_imports_the_command_line():
    """Imports run one way: ``wtal.cli`` calls the library, nothing else imports it."""
    package = Path(wtal.__file__).parent
    for path in package.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "wtal.cli" not in names, f"{path.relative_to(package)} imports wtal.cli"
