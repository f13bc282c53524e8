"""Shared fixtures. Every test session builds models in a private cache, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # no per-example deadline: a stall of a shared 2-core host is no failure of the property under test
    from hypothesis import settings

    settings.register_profile("codebench", deadline=None)
    settings.load_profile("codebench")
except ImportError:  # an extra's own environment may lack hypothesis; its tests do not use it
    pass


@pytest.fixture(scope="session", autouse=True)
def codebench_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CODEBENCH_CACHE -> a session temp dir; worker processes inherit it."""
    old = os.environ.get("CODEBENCH_CACHE")
    if not os.environ.get("CODEBENCH_TOOLS_CACHE"):  # llama.cpp's tools take minutes to build: the user's build
        from engines.models.tiny import cache_dir

        os.environ["CODEBENCH_TOOLS_CACHE"] = str(cache_dir())
    path = tmp_path_factory.mktemp("codebench-cache")
    os.environ["CODEBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CODEBENCH_CACHE", None)
    else:
        os.environ["CODEBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(codebench_cache: Path) -> Path:
    """The tiny model's directory in the session cache (built once)."""
    from engines.models.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(autouse=True)
def private_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own default database, never the user's."""
    path = tmp_path / "runs.db"
    monkeypatch.setenv("CODEBENCH_DB", str(path))
    return path


@pytest.fixture
def snap_compare(snap_compare, request: pytest.FixtureRequest):
    """The plugin's compare, made fit for a busy host and a CI that keeps only its log.

    The picture is taken once the screen has stopped changing (a layout pass that comes late on a loaded
    machine otherwise shows in it), and a mismatch prints both screens as text, so the log says what differed.
    """
    from tests.snapshot_support import print_mismatch, until_steady

    def compare(app, press=(), terminal_size=(80, 24), run_before=None) -> bool:
        async def then_steady(pilot) -> None:
            if run_before is not None:
                result = run_before(pilot)
                if hasattr(result, "__await__"):
                    await result
            await until_steady(pilot)

        ok = snap_compare(app, press=press, terminal_size=terminal_size, run_before=then_steady)
        if not ok:
            print_mismatch(request.node)
        return ok

    return compare
