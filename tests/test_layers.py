"""The layers' import contract, over every import in the tree (function-local ones included): `store` imports
neither `engines` nor `tui`, and `engines` never imports `tui`."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

FORBIDDEN = {"store": ("engines", "tui"), "engines": ("tui",)}


def imports_of(package: str) -> list[tuple[str, int, str]]:
    """(file, line, imported top-level package) for every import statement under ROOT/package."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(str(path.relative_to(ROOT)), node.lineno, n.split(".")[0]) for n in names]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_the_one_above(package):
    broken = [f"{f}:{line} imports {top}" for f, line, top in imports_of(package) if top in FORBIDDEN[package]]
    assert not broken, "\n".join(broken)


def test_the_scan_sees_function_local_imports():
    """engines/ imports store lazily in places; a scan that missed those would pass vacuously."""
    assert any(top == "store" for _, _, top in imports_of("engines"))
    assert any(top == "engines" for _, _, top in imports_of("tui"))


def test_status_colours_have_one_definition():
    """Every screen and CLI table colours a status from tui/status.py: five copies once disagreed on
    "cancelled" (dim in one, yellow in the others)."""
    copies = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"failed", "cancelled"} <= keys:
                    copies.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert copies == ["tui/status.py:7"], copies
