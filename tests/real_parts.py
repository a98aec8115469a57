"""A real part that cannot start: a skip on a developer's machine, a failure in CI.

The tests run against real components (ArcadeDB over Bolt, the bundled model behind
llama.cpp, Chromium). `.ci/run` installs every one of them, so under `CI=true` one that is
missing or fails to start is a broken run, never a quiet skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the test with `reason`, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a real part that cannot start fails the run)")
    pytest.skip(reason)
