"""The project's standards, checked where CI runs the tests: ruff (lint and format) on the
whole tree and mypy on the packages, with the versions pinned in the dev extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    # the interpreter's own ruff, whether or not its environment is on PATH
    pytest.importorskip("ruff", reason="ruff is not installed (dev extra)")
    lint = run(sys.executable, "-m", "ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout[-5000:]
    fmt = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-5000:]


def test_mypy_on_the_packages() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (dev extra)")
    checked = run(sys.executable, "-m", "mypy")
    assert checked.returncode == 0, checked.stdout[-5000:]
