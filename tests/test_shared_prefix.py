"""The shared-prefix workload: grid axes, prompts, the engines through the CLI; and the text workloads."""

from __future__ import annotations

import json

import pytest

from engines.base import SpecError
from engines.study.schema import StudySpec, build_spec
from tests.helpers import FAST, cli, rows

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _spec(**grid) -> StudySpec:
    return build_spec({"runs": [{"engine": "hydragen"}], "workload": {"kind": "shared-prefix"}, "grid": grid})


def test_shared_prefix_grid_maps_n_to_batch_and_keeps_p_u_as_axes():
    spec = _spec(batch="32:257:x2", shared_len="1024:16385:x2", suffix_len="32", output_len="128")
    cells = spec.cells()
    assert len(cells) == 4 * 5
    first, last = cells[0], cells[-1]
    assert (first.batch, first.input_len, first.output_len, dict(first.extra)) == (32, 1056, 128, {"shared_len": 1024, "suffix_len": 32})
    assert (last.batch, last.input_len, dict(last.extra)["shared_len"]) == (256, 16384 + 32, 16384)
    # OOM dominance: more completions or a longer prefix is larger in every dimension.
    oom = next(c for c in cells if c.batch == 64 and dict(c.extra)["shared_len"] == 4096)
    dominated = {(c.batch, dict(c.extra)["shared_len"]) for c in cells if c.dominates(oom)}
    assert dominated == {(n, p) for n in (64, 128, 256) for p in (4096, 8192, 16384)} - {(64, 4096)}
    assert [c.dims() for c in cells] == sorted(c.dims() for c in cells)  # smallest first


def test_shared_prefix_spec_errors():
    with pytest.raises(SpecError, match="needs --shared-len"):
        _spec(batch="2")
    with pytest.raises(SpecError, match="need --workload shared-prefix"):
        build_spec({"runs": [{"engine": "hf-generate"}], "grid": {"shared_len": "64"}})
    with pytest.raises(SpecError, match="jsonl:FILE"):
        build_spec({"runs": [{"engine": "hf-generate"}], "workload": {"kind": "jsonl"}})
    with pytest.raises(SpecError, match="unknown workload 'tpch'"):
        build_spec({"runs": [{"engine": "hf-generate"}], "workload": {"kind": "tpch"}})


def test_common_prefix_len():
    from engines.adapters.hf.shared_prefix import common_prefix_len

    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 3, 7]]) == 2
    assert common_prefix_len([[1, 2, 3]]) == 2  # one sequence keeps one token of its own
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_len([[9, 2], [1, 2]]) == 0


def test_prompts_for_every_workload(tiny_model, tmp_path):
    from engines.models.prompt_sources import prompts_for
    from engines.models.workloads import load_tokenizer

    tok_file = tiny_model / "tokenizer.json"
    tok = load_tokenizer(tok_file)
    sp = prompts_for(tok_file, {"kind": "shared-prefix"}, 4, 0, 7, {"shared_len": 48, "suffix_len": 8})
    assert [len(p) for p in sp] == [56] * 4 and all(p[:48] == sp[0][:48] for p in sp)
    assert len({tuple(p[48:]) for p in sp}) == 4
    he = prompts_for(tok_file, {"kind": "humaneval"}, 3, 64, 0)
    assert [len(p) for p in he] == [64] * 3 and len({tuple(p) for p in he}) == 3
    assert all(tok.encode(tok.decode(p), add_special_tokens=False).ids == p for p in he)  # text-in engines see the same
    assert prompts_for(tok_file, {"kind": "humaneval"}, 3, 64, 0) == he  # seeded
    f = tmp_path / "dialog.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i} + " + "y" * (40 + i)}) for i in range(5)))
    js = prompts_for(tok_file, {"kind": "jsonl", "path": str(f)}, 2, 12, 0)
    assert [len(p) for p in js] == [12, 12]
    with pytest.raises(SpecError, match="only 0 prompts of at least 5000 tokens"):
        prompts_for(tok_file, {"kind": "jsonl", "path": str(f)}, 1, 5000, 0)


@pytest.mark.parametrize("line, fragment", [("not json", ":1: not valid JSON"), ('{"txt": "x"}', "needs a string field 'text'"),
                                            ("", "is empty")])  # fmt: skip
def test_bad_jsonl_files(tmp_path, line, fragment):
    from engines.models.prompt_sources import read_jsonl_texts

    f = tmp_path / "bad.jsonl"
    f.write_text(line)
    with pytest.raises(SpecError, match=fragment):
        read_jsonl_texts(f)
    with pytest.raises(SpecError, match="does not exist"):
        read_jsonl_texts(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory):
    db = tmp_path_factory.mktemp("shared") / "runs.db"
    proc = cli("run", "--engine", "hf-generate,hf-noshare,hf-prefix-kv,hydragen,noattention", "--workload", "shared-prefix",
               "--shared-len", "24,48", "--completions", "3", "--suffix-len", "6", "--output-len", "5", *FAST,
               db=db, env={**ONE_THREAD, "COLUMNS": "200"}, check=True)  # fmt: skip
    return db, proc


def test_shared_prefix_grid_through_the_cli(shared_study):
    db, proc = shared_study
    runs = rows(db, "select id, engine, status, spec from run order by created_at")
    assert [r[1:3] for r in runs] == [("hf-generate", "done"), ("hf-noshare", "done"), ("hf-prefix-kv", "done"),
                                      ("hydragen", "done"), ("noattention", "done")]  # fmt: skip
    assert json.loads(runs[0][3])["workload"]["content"] == "code (stdlib source)"
    for run_id, engine, *_ in runs:
        cells = rows(db, "select batch, input_len, output_len, params, status, metrics from cell where run_id=? order by idx", run_id)
        assert [(b, i, o, json.loads(p), s) for b, i, o, p, s, _ in cells] == [
            (3, 30, 5, {"shared_len": 24, "suffix_len": 6}, "done"), (3, 54, 5, {"shared_len": 48, "suffix_len": 6}, "done")]
        for *_, metrics in cells:
            m = json.loads(metrics)
            if engine == "hf-generate":
                assert "reference" not in m
                continue
            shared = m["last_extra"]["shared_prefix_len"]
            assert (shared == 0) if engine == "hf-noshare" else (shared >= 24)
            assert m["reference"]["speedup"] > 0
            # Sharing the prefix changes where attention is computed, not what it computes.
            assert m["reference"]["identical"] is (None if engine == "noattention" else True)
    assert "shared_len" in proc.stdout and "suffix_len=6" in proc.stdout  # the axes the table shows


def test_replay_shows_the_axes_and_identity(shared_study):
    db, _ = shared_study
    out = cli("--replay", "last~1", "--headless", db=db, env={"COLUMNS": "200"}, check=True).stdout
    assert "hydragen" in out and "shared_len" in out and "suffix_len" in out and "same tokens" in out and "yes" in out
    assert "workload: shared-prefix" in out


@pytest.mark.parametrize("args, fragment", [
    (["--workload", "shared-prefix"], "needs --shared-len"),
    (["--shared-len", "64"], "need --workload shared-prefix"),
    (["--workload", "shared-prefix", "--shared-len", "64", "--input-len", "8"], "instead of --input-len"),
    (["--completions", "4"], "use it with --workload shared-prefix"),
    (["--workload", "jsonl"], "jsonl:FILE"),
    (["--workload", "jsonl:/no/such.jsonl"], "does not exist"),
    (["--workload", "shared-prefix", "--shared-len", "0"], "below 1"),
])  # fmt: skip
def test_bad_workload_input(tmp_path, args, fragment):
    proc = cli("run", *args, "--dry-run", db=tmp_path / "r.db")
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_jsonl_workload_runs_and_stores_its_content_type(tmp_path):
    f = tmp_path / "spider.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"SELECT name, age FROM users{i} WHERE age > {i} ORDER BY name;"})
                           for i in range(6)))  # fmt: skip
    db = tmp_path / "r.db"
    cli("run", "--workload", f"jsonl:{f}", "--batch", "2", "--input-len", "8", "--output-len", "3", *FAST, db=db,
        env=ONE_THREAD, check=True)  # fmt: skip
    (spec,) = rows(db, "select spec from run")
    assert json.loads(spec[0])["workload"] == {"kind": "jsonl", "seed": 0, "path": str(f), "content": "spider"}
    assert rows(db, "select status from cell") == [("done",)]
    out = cli("--replay", "last", "--headless", db=db, check=True).stdout
    assert "workload: jsonl (spider)" in out
