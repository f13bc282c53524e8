"""The embedded tiny model: deterministic build, damage repair, concurrent builds, HF loading."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import engines.models.tiny as tiny
from engines.base import SpecError
from engines.models.workloads import corpus, stdlib_files

REPO = Path(__file__).resolve().parent.parent
FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "manifest.json"]


@functools.cache
def shipped_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(tiny.TINY_TOKENIZER))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    return [p.name for p in (root / "models").iterdir() if p.name.startswith(f".{tiny.TINY_VERSION}.") and p.is_dir()]


def test_build_layout_manifest_and_pinned_hash(tmp_path):
    d = tiny.ensure_tiny(tmp_path)
    assert d == tmp_path / "models" / tiny.TINY_VERSION
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES)
    assert sha(d / "model.safetensors") == tiny.TINY_WEIGHTS_SHA256
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["sha256"] == {name: sha(d / name) for name in FILES if name != "manifest.json"}
    assert tiny.tokenizer_path(d) == d / "tokenizer.json"
    assert tiny.problems(d) == [] and leftovers(tmp_path) == []


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEBENCH_CACHE", str(tmp_path / "elsewhere"))
    assert tiny.ensure_tiny() == tmp_path / "elsewhere" / "models" / tiny.TINY_VERSION


def test_two_builds_are_byte_identical(tmp_path):
    a, b = tiny.ensure_tiny(tmp_path / "a"), tiny.ensure_tiny(tmp_path / "b")
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit deep inside the weights: still a valid safetensors file
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _truncate(d / "model.safetensors"),
        lambda d: _flip_byte(d / "model.safetensors"),
        lambda d: (d / "model.safetensors").unlink(),
        lambda d: (d / "tokenizer.json").write_text("{}"),
        lambda d: (d / "config.json").unlink(),
        lambda d: (d / "manifest.json").write_text("{}"),
    ],
    ids=["truncated-weights", "flipped-bit", "missing-weights", "bad-tokenizer", "missing-config", "bad-manifest"],
)
def test_damage_is_detected_and_rebuilt(tmp_path, damage):
    d = tiny.ensure_tiny(tmp_path)
    good = {name: (d / name).read_bytes() for name in FILES}
    damage(d)
    assert tiny.problems(d)
    assert tiny.ensure_tiny(tmp_path) == d
    assert {name: (d / name).read_bytes() for name in FILES} == good
    assert leftovers(tmp_path) == []


def test_a_file_where_the_directory_should_be_is_replaced(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tiny.TINY_VERSION).write_text("not a directory")
    d = tiny.ensure_tiny(tmp_path)
    assert d.is_dir() and tiny.problems(d) == []


def test_leftovers_of_a_dead_builder_are_cleared(tmp_path):
    (tmp_path / "models" / f".{tiny.TINY_VERSION}.build-dead").mkdir(parents=True)
    (tmp_path / "models" / f".{tiny.TINY_VERSION}.build-dead" / "model.safetensors").write_bytes(b"half")
    d = tiny.ensure_tiny(tmp_path)
    assert tiny.problems(d) == [] and leftovers(tmp_path) == []


def test_nondeterministic_build_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, "TINY_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(tiny.TinyBuildError, match="not deterministic"):
        tiny.ensure_tiny(tmp_path)
    assert not (tmp_path / "models" / tiny.TINY_VERSION).exists() and leftovers(tmp_path) == []


def test_unwritable_cache_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpecError, match="CODEBENCH_CACHE") as err:
        tiny.ensure_tiny(blocker / "cache")
    assert "\n" not in str(err.value)


_RACER = """
import os, sys, time
from pathlib import Path
import engines.models.tiny as tiny
root, go, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[4])
build = tiny._build_into


def counted_build(tmp):  # records every build, so the test can count them across processes
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} ")
    build(tmp)


tiny._build_into = counted_build
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.001)
d = tiny.ensure_tiny(root)
print(os.stat(d / "model.safetensors").st_ino, len(tiny.problems(d)))
"""


def test_concurrent_builds_in_separate_processes(tmp_path):
    root, go, log = tmp_path / "cache", tmp_path / "go", tmp_path / "builds.log"
    n = 3
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(root), str(go), str(tmp_path / f"ready{i}"), str(log)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        dead = [p.communicate()[1] for p in procs if p.poll() is not None]
        assert not dead and time.monotonic() < deadline, f"racers did not start: {dead}"
        time.sleep(0.01)
    go.touch()  # all three call ensure_tiny at the same moment
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    lines = {out.strip() for out, _ in results}
    d = root / "models" / tiny.TINY_VERSION
    # One build only (the others waited on the lock, then found it done); all saw the same intact files.
    assert len(log.read_text().split()) == 1
    assert lines == {f"{os.stat(d / 'model.safetensors').st_ino} 0"}
    assert tiny.problems(d) == [] and leftovers(root) == []


def test_shipped_tokenizer_shape():
    tok = shipped_tokenizer()
    assert tok.get_vocab_size() == 4096
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|pad|>") == 1
    cfg = tiny.load_tiny_config()
    assert cfg["vocab_size"] == tok.get_vocab_size()


def test_tokenizer_round_trips_python_source():
    tok = shipped_tokenizer()
    files = stdlib_files()
    for path in files[:: max(1, len(files) // 40)]:  # ~40 files across the whole stdlib
        try:
            src = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a legacy non-UTF-8 file: not text
        assert tok.decode(tok.encode(src).ids) == src, path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
@example("<|endoftext|>")  # hypothesis mines string constants from the code: it once drew this one
@example("a<|pad|>b")
def test_tokenizer_round_trips_any_text(text):
    """Lossless, special tokens included: text that spells one encodes to its id and decodes back to it when
    special tokens are kept (the default decode drops them, as every HF tokenizer does)."""
    tok = shipped_tokenizer()
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


@pytest.mark.skipif(platform.python_version() != "3.11.7", reason="the shipped tokenizer was trained on CPython 3.11.7's stdlib")
def test_make_tokenizer_reproduces_the_shipped_file(tmp_path):
    out = tmp_path / "tokenizer.json"
    subprocess.run([sys.executable, str(REPO / "assets/tiny/make_tokenizer.py"), "--out", str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == tiny.TINY_TOKENIZER.read_bytes()


def test_param_count_matches_the_config():
    cfg = tiny.load_tiny_config()
    weights = tiny.make_weights(cfg)
    assert sum(w.size for w in weights.values()) == tiny.param_count() == 5_245_184
    assert all(str(w.dtype) == "float32" for w in weights.values())


def test_transformers_loads_and_generates_greedily(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(tiny_model, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert sum(p.numel() for p in model.parameters()) == tiny.param_count()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 0, 1)
    src = corpus().text[:2000]
    ids = tok(src)["input_ids"]
    assert ids == Tokenizer.from_file(str(tiny.tokenizer_path(tiny_model))).encode(src).ids  # no BOS added
    assert tok.decode(ids) == src
    prompt = torch.tensor([ids[:40], ids[40:80]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses to thread spin-waits on a shared CPU
    try:
        with torch.inference_mode():
            kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False)
            out, again = model.generate(prompt, **kw), model.generate(prompt, **kw)
            logits = model(prompt).logits
    finally:
        torch.set_num_threads(threads)
    assert out.shape == (2, 48) and torch.equal(out, again)
    assert torch.equal(out[:, :40], prompt)
    assert 1.5 < logits.std(-1).mean().item() < 2.5  # decisive greedy picks, as the weight recipe promises


def test_modules_import_and_run_without_torch(tmp_path):
    code = (
        "import sys, engines.models.tiny as t, engines.models.workloads as w\n"
        f"d = t.ensure_tiny({str(tmp_path)!r})\n"
        "p = w.synthetic_prompts(t.tokenizer_path(d), 2, 64, 0)\n"
        "assert [len(x) for x in p] == [64, 64]\n"
        "w.corpus_fingerprint()\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
