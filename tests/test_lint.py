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


def test_every_setting_a_message_names_exists() -> None:
    """A message or docstring that tells users to set GLAN_SOMETHING names a real setting:
    one of the Settings fields, read from the environment."""
    import re

    from server.settings import Settings

    real = {f"GLAN_{name.upper()}" for name in Settings.model_fields}
    named: dict[str, set[str]] = {}
    for folder in ("graph", "generators", "server"):
        for source in (ROOT / folder).rglob("*.py"):
            for found in re.findall(r"GLAN_[A-Z0-9_]*[A-Z0-9]", source.read_text(encoding="utf-8")):
                named.setdefault(found, set()).add(str(source.relative_to(ROOT)))
    unknown = {name: sorted(where) for name, where in named.items() if name not in real}
    assert not unknown, f"settings named but not defined: {unknown}"
    assert "GLAN_DB_PATH" in named  # the scan does find names

    # and every setting is read somewhere: none is defined to do nothing
    code = "\n".join(
        source.read_text(encoding="utf-8")
        for folder in ("graph", "generators", "server")
        for source in (ROOT / folder).rglob("*.py")
    )
    unread = [f for f in Settings.model_fields if not re.search(rf"\.{f}\b", code)]
    assert not unread, f"settings that nothing reads: {unread}"
