"""Shared fixtures. Every test session builds models in a private cache, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
