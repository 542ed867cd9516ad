import subprocess
import sys


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "wtal", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("data", "score"):
        assert command in out
