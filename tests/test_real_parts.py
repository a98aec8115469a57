"""The suite's own guards: a real part that cannot start is a skip here and a failure in
CI, and the session's last step does not need the parts it would stop."""

from __future__ import annotations

import sys

import pytest

from tests import bolt_server
from tests.real_parts import in_ci, unavailable


def test_a_missing_part_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "")
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no server"):
        unavailable("no server")
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert in_ci()
        with pytest.raises(pytest.fail.Exception, match="no server.*CI=true"):
            unavailable("no server")


def test_the_arcadedb_backend_fails_in_ci_when_its_server_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from tests import conftest

    def refuse() -> None:
        raise bolt_server.BoltServerUnavailable("ArcadeDB could not start (test)")

    monkeypatch.setattr(bolt_server, "arcadedb_target", refuse)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ArcadeDB could not start"):
        next(conftest.make_store("arcadedb", tmp_path))  # type: ignore[arg-type]


def test_leaving_the_jvm_needs_no_jvm_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arcadedb-embedded (and so without jpype), the session's last fixture has
    nothing to leave and must not fail at teardown."""
    monkeypatch.setitem(sys.modules, "jpype", None)  # `import jpype` now raises ImportError
    monkeypatch.setitem(sys.modules, "jpype.config", None)
    bolt_server.detach_jvm()
