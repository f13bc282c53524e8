"""The layers' import contract, over every import in the tree (function-local ones included): `store` imports
neither `engines` nor `tui`, `engines` never imports `tui`, and inside `engines` each layer imports only the
layers below it (ENGINE_LAYERS): the two import circles of the flat engines/ (the study spec <-> speculation
and executors; tui's screens <-> its command modules) cannot come back."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import ROOT

FORBIDDEN = {"store": ("engines", "tui"), "engines": ("tui",)}


# engines/ from the bottom up: what each part may import of engines (itself always). The tools (models,
# measure, quality) stand on the study; the adapters on the tools; the registry collects the adapters'
# declarations; the harness drives all of it.
_TOOLS = ("base", "study", "models", "measure", "quality")
ENGINE_LAYERS = {
    "base": (),
    "study": ("base",),
    "models": _TOOLS,
    "measure": _TOOLS,
    "quality": _TOOLS,
    "adapters": _TOOLS,
    "registry": (*_TOOLS, "adapters"),
    "harness": (*_TOOLS, "adapters", "registry"),
}


def imports_of(package: str, depth: int = 1) -> list[tuple[str, int, str]]:
    """(file, line, imported module cut to `depth` parts) for every import statement under ROOT/package;
    `from engines import registry` counts as engines.registry."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if depth > 1 else [node.module]
            else:
                continue
            found += [(str(path.relative_to(ROOT)), node.lineno, ".".join(n.split(".")[:depth])) for n in names]
    return found


def _part(path: str) -> str:
    """engines/adapters/hf/engine.py -> adapters; engines/registry.py -> registry."""
    return path.split("/")[1].removesuffix(".py")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_the_one_above(package):
    broken = [f"{f}:{line} imports {top}" for f, line, top in imports_of(package) if top in FORBIDDEN[package]]
    assert not broken, "\n".join(broken)


def test_each_engines_layer_imports_only_the_ones_below():
    broken = []
    for f, line, name in imports_of("engines", depth=3):
        if not name.startswith("engines."):
            continue
        mine, theirs = _part(f), name.split(".")[1]
        if theirs != mine and theirs not in ENGINE_LAYERS[mine]:
            broken.append(f"{f}:{line} ({mine}) imports {name} ({theirs})")
    assert not broken, "\n".join(broken)


def test_every_engines_part_has_a_layer():
    """A new folder or module under engines/ must say where it stands, or the contract would not cover it."""
    parts = {p.name.removesuffix(".py") for p in (ROOT / "engines").iterdir() if p.name != "__init__.py"
             and (p.suffix == ".py" or (p / "__init__.py").exists())}  # fmt: skip
    assert parts == set(ENGINE_LAYERS), parts ^ set(ENGINE_LAYERS)


# Every server engine (serve:llama.cpp in llamacpp/) is measured through the one OpenAI-compatible client and its
# server base; nothing else crosses families.
SHARED_ADAPTER_MODULES = ("engines.adapters.openai.served", "engines.adapters.openai.server_process")


def test_adapter_families_do_not_import_each_other():
    """One folder per engine family: hf, llamacpp, vllm, openai stand side by side."""
    broken = []
    for f, line, name in imports_of("engines/adapters", depth=4):
        family = f.split("/")[2].removesuffix(".py")
        if name in SHARED_ADAPTER_MODULES:
            continue
        if name.startswith("engines.adapters.") and name.split(".")[2] != family:
            broken.append(f"{f}:{line} ({family}) imports {name}")
    assert not broken, "\n".join(broken)


def test_screens_use_no_private_name_of_a_command_module():
    """Screens and commands both call the headless functions (store, engines); a screen never borrows a
    command module's private helper (Compare once imported history's _results and _floors)."""
    broken = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        if "commands" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tui.commands"):
                broken += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                           if a.name.startswith("_")]  # fmt: skip
    assert not broken, broken


def test_command_modules_do_not_import_the_cli():
    """tui.cli imports every command module; a command that needs another's parser uses tui.parsing (the demo and
    `noise` once imported tui.cli back)."""
    broken = [f"{f}:{line}" for f, line, name in imports_of("tui/commands", depth=2) if name == "tui.cli"]
    assert not broken, broken


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


def _keys_written(path: str, name: str) -> set[str]:
    """String keys given to `name` in a file: `name = {"k": ...}`, `name["k"] = ...`, `name.setdefault("k", ...)`."""
    keys: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Dict):
                keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name:
            if isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant):
                keys.add(node.slice.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setdefault"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == name and node.args
                and isinstance(node.args[0], ast.Constant)):  # fmt: skip
            keys.add(node.args[0].value)
    return keys


def _keys_read(path: str, function: str, name: str) -> set[str]:
    """String keys a function reads from `name` with `.get("k")` or `name["k"]`."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    keys = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == name
                and isinstance(node.args[0], ast.Constant)):  # fmt: skip
            keys.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name:
            if isinstance(node.slice, ast.Constant):
                keys.add(node.slice.value)
    return keys


def test_every_writer_and_the_reader_of_a_cell_result_use_its_typed_keys():
    """The cell payload has one definition (store.payload.CellResult): the worker, the runner and the
    interleaved schedule write only its keys, and the writer stores exactly those it reads. A writer that
    wrote another key (as vLLM once wrote its own per-GPU key) fails here."""
    from store.payload import CellResult

    typed = set(CellResult.__annotations__)
    written = {f: _keys_written(f, "result") for f in ("engines/harness/worker.py", "engines/harness/runner.py",
                                                        "engines/harness/interleave.py")}  # fmt: skip
    assert all(written.values()), written  # the scan sees each writer
    strays = {f: keys - typed for f, keys in written.items() if keys - typed}
    assert not strays, strays
    read = _keys_read("store/writer.py", "add_cell", "result")
    assert read and read <= typed, read - typed
    assert typed - {"tokens_per_s"} <= read, typed - read  # tokens_per_s is recomputed from the repeats


def test_tensor_parallel_shares_are_built_by_one_type():
    """metrics["tp"] is written only through store.payload.TPShares: no dict literal spells its keys."""
    from store.payload import TPShares

    keys = {"peak_gpu_bytes_per_rank", "peak_rss_bytes_per_rank", "nvml_used_bytes_per_gpu", "peak_bytes_per_rank"}
    assert keys - {"peak_bytes_per_rank"} <= set(TPShares.__dataclass_fields__)
    literals = []
    for path in sorted((ROOT / "engines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict) and keys & {k.value for k in node.keys if isinstance(k, ast.Constant)}:
                literals.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not literals, literals
