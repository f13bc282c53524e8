"""The fim workload: prompts cut from stdlib source in each family's FIM format, and their scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.base import SpecError
from engines.models import presets
from engines.models.fim import FORMATS, fim_examples, fim_prompts, fim_tokens
from engines.models.prompt_sources import prompts_for
from engines.models.tiny import TINY_TOKENIZER, tokenizer_path
from engines.models.workloads import corpus, load_tokenizer, round_trips
from engines.quality.workload_scores import edit_distance, edit_similarity, fim_scores, score_cell

REPO = Path(__file__).resolve().parents[1]

# The FIM tokens of each family's published tokenizer and their ids there, against the preset's vocabulary.
PUBLISHED = {
    "starcoder2-7b": ("starcoder", {"<fim_prefix>": 1, "<fim_middle>": 2, "<fim_suffix>": 3, "<fim_pad>": 4}),
    "qwen2.5-coder-7b": ("qwen2.5-coder", {"<|fim_prefix|>": 151659, "<|fim_middle|>": 151660,
                                           "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662}),
    "codellama-7b": ("codellama", {"▁<PRE>": 32007, "▁<SUF>": 32008, "▁<MID>": 32009, "▁<EOT>": 32010}),
    "deepseek-coder-6.7b": ("deepseek-coder", {"<｜fim▁hole｜>": 32015, "<｜fim▁begin｜>": 32016,
                                               "<｜fim▁end｜>": 32017, "<|EOT|>": 32021}),
}  # fmt: skip


def family_tokenizer(tmp_path: Path, tokens: list[str]) -> Path:
    """tiny's byte-level BPE with a family's FIM tokens in place of tiny's own (built offline, as tiny's is)."""
    data = json.loads(Path(str(TINY_TOKENIZER)).read_text())
    data["added_tokens"] = [a for a in data["added_tokens"] if not a["content"].startswith("<fim_")]
    for k, name in enumerate(tokens):
        data["added_tokens"].append({"id": 4096 + k, "content": name, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})  # fmt: skip
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def tok_file(tiny_model):
    return tokenizer_path(tiny_model)


def check_examples(tok_file: Path, batch: int, length: int, seed: int) -> None:
    tok = load_tokenizer(tok_file)
    fim = fim_tokens(tok)
    text = corpus().text
    examples = fim_examples(tok_file, batch, length, seed)
    assert len(examples) == batch and len({e.start for e in examples}) == batch
    for e in examples:
        ids = list(e.ids)
        assert len(ids) == length
        # prefix + middle + suffix is the original source, where it stands in the corpus
        assert text[e.start : e.start + len(e.prefix + e.middle + e.suffix)] == e.prefix + e.middle + e.suffix
        assert e.middle.endswith("\n") and e.middle.strip() and e.middle.count("\n") == 1
        # laid out prefix-suffix-middle with the family's tokens, each piece decoding to the source
        assert ids[0] == fim.prefix and ids[-1] == fim.middle and ids.count(fim.suffix) == 1
        cut = ids.index(fim.suffix)
        assert tok.decode(ids[1:cut], skip_special_tokens=False) == e.prefix
        assert tok.decode(ids[cut + 1 : -1], skip_special_tokens=False) == e.suffix
        assert round_trips(tok, ids)  # text-in engines re-encode exactly these ids


@pytest.mark.parametrize("batch,length,seed", [(1, 8, 0), (4, 64, 0), (3, 256, 5), (2, 2048, 1)])
def test_tiny_prompts_round_trip_to_the_source(tok_file, batch, length, seed):
    check_examples(tok_file, batch, length, seed)


def test_tiny_has_starcoder_fim_tokens_in_its_vocabulary():
    tok = load_tokenizer(Path(str(TINY_TOKENIZER)))
    fim = fim_tokens(tok)
    assert fim.family == "starcoder" and (fim.prefix, fim.middle, fim.suffix) == (4093, 4094, 4095)
    assert tok.token_to_id("<|endoftext|>") in fim.stops
    assert tok.get_vocab_size() == 4096  # the embedding (so the weights) keeps its size


def test_same_seed_same_prompts_and_worker_entry_agrees(tok_file):
    a = fim_prompts(tok_file, 3, 96, 7)
    assert fim_prompts(tok_file, 3, 96, 7) == a != fim_prompts(tok_file, 3, 96, 8)
    assert prompts_for(tok_file, {"kind": "fim"}, 3, 96, 7) == a


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_each_family_format_on_its_tokenizer(tmp_path, preset):
    family, published = PUBLISHED[preset]
    assert max(published.values()) < presets.load(preset).config["vocab_size"]  # the preset has room for them
    tok_file = family_tokenizer(tmp_path, list(published))
    fim = fim_tokens(load_tokenizer(tok_file))
    assert fim.family == family
    fmt = next(f for f in FORMATS if f.family == family)
    tok = load_tokenizer(tok_file)
    assert [tok.id_to_token(i) for i in (fim.prefix, fim.suffix, fim.middle)] == [fmt.prefix[0], fmt.suffix[0],
                                                                                   fmt.middle[0]]  # fmt: skip
    check_examples(tok_file, 2, 128, 3)


def test_a_tokenizer_without_fim_tokens_is_refused(tmp_path):
    with pytest.raises(SpecError, match="no fill-in-the-middle tokens"):
        fim_tokens(load_tokenizer(family_tokenizer(tmp_path, [])))


def test_a_model_without_fim_tokens_exits_2_before_any_worker(tmp_path, tiny_model):
    model = tmp_path / "nofim"
    model.mkdir()
    for f in Path(tiny_model).iterdir():
        if f.name != "tokenizer.json":
            (model / f.name).symlink_to(f)
    family_tokenizer(model, [])
    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "tui.cli", "--db", str(db), "run", "--model", str(model),
                          "--workload", "fim", "--input-len", "64", "--output-len", "4", "--quiet"],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ})  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = [x for x in (out.stdout + out.stderr).strip().splitlines() if x]
    assert len(lines) == 1 and "no fill-in-the-middle tokens" in lines[0] and "Traceback" not in out.stderr
    assert not db.exists()


def test_edit_similarity_and_scores_on_known_answers():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("", "") == 1.0
    assert edit_similarity("abcd", "wxyz") == 0.0 and edit_similarity("x = 1", "x = 2") == pytest.approx(0.8)
    middles = ["    return a + b\n", "x = 1\n", "y = f(x)\n"]
    # exact (the model goes on past the hole: judged on the hole's one line), near miss, empty answer
    answers = ["    return a + b\n    print('more')\n", "x = 2\n", ""]
    s = fim_scores(middles, answers)
    assert s["n"] == 3 and s["exact_match"] == pytest.approx(1 / 3)
    assert s["edit_similarity"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_score_cell_cuts_at_the_end_token(tok_file):
    tok = load_tokenizer(tok_file)
    (e,) = fim_examples(tok_file, 1, 64, 0)
    eos = tok.token_to_id("<|endoftext|>")
    right = tok.encode(e.middle, add_special_tokens=False).ids + [eos] + tok.encode("junk = 1", add_special_tokens=False).ids
    wrong = tok.encode("pass\n", add_special_tokens=False).ids
    got = score_cell(str(tok_file), {"kind": "fim"}, 1, 64, 0, None, [right])["fim"]
    assert got["exact_match"] == 1.0 and got["edit_similarity"] == 1.0 and got["format"] == "starcoder"
    assert score_cell(str(tok_file), {"kind": "fim"}, 1, 64, 0, None, [wrong])["fim"]["exact_match"] == 0.0
    assert score_cell(str(tok_file), {"kind": "synthetic"}, 1, 64, 0, None, [wrong]) == {}


def test_fim_run_end_to_end_stores_scores_per_cell(tmp_path):
    import sqlite3

    db = tmp_path / "runs.db"
    out = subprocess.run([sys.executable, "-m", "tui.cli", "--db", str(db), "run", "--model", "tiny", "--workload",
                          "fim", "--batch", "1,2", "--input-len", "64", "--output-len", "4", "--warmup", "0",
                          "--iters", "1", "--repeats", "1", "--quiet"], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = sqlite3.connect(db).execute("select batch, status, metrics from cell order by batch").fetchall()
    assert [(b, s) for b, s, _ in rows] == [(1, "done"), (2, "done")]
    for batch, _, metrics in rows:
        fim = json.loads(metrics)["fim"]
        assert fim["n"] == batch and fim["format"] == "starcoder"
        assert 0.0 <= fim["exact_match"] <= 1.0 and 0.0 <= fim["edit_similarity"] <= 1.0
