"""The verdict on real stored studies: llama.cpp at three quantizations on tiny with greedy agreement (quality)
measured, an identical copy of one run (a tie by construction), and seed 001's H100 study for OOM cells and the
memory model's prediction outside the grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli
from tests.tui_support import utc  # noqa: F401 (fixture)

SEED = ROOT / "docs/results/2026-11-22-h100-seed001.db"
EAGER, FLASH = "2c71fd76", "fa729bdb"


def _verdict(db: Path, *args: str) -> dict:
    return json.loads(cli("verdict", *args, "--format", "json", db=db, check=True).stdout)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    db = tmp_path_factory.mktemp("verdict") / "runs.db"
    proc = cli("run", "--model", "tiny", "--engine", "llama.cpp", "--quant", "f32,q8_0,q4_0", "--batch", "1,2",
               "--input-len", "16", "--output-len", "8", "--warmup", "1", "--iters", "1", "--repeats", "3", "--check",
               "--quiet", db=db, timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return db


@pytest.fixture(scope="module")
def engines_study(study, tmp_path_factory) -> Path:
    """A copy of that database plus hf-generate at two precisions and two attentions on tiny, with agreement, under
    a 400 MiB --cell-mem-limit: eager's scores at batch 64 x 2048 tokens need gigabytes, so those cells are OOM."""
    db = tmp_path_factory.mktemp("engines") / "runs.db"
    shutil.copy(study, db)
    proc = cli("run", "--model", "tiny", "--engine", "hf-generate", "--precision", "fp32,bf16", "--attention",
               "eager,sdpa", "--batch", "1,64", "--input-len", "16,2048", "--output-len", "2", "--warmup", "0",
               "--iters", "1", "--repeats", "2", "--cell-mem-limit", "400MiB", "--check", "--quiet", db=db,
               timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return db


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_several_engines_precisions_and_an_oom_limit(engines_study):
    from tests.helpers import rows

    hf = [r for (r,) in rows(engines_study, "select id from run where engine = 'hf-generate' order by created_at")]
    oom = {r for (r,) in rows(engines_study, "select run_id from cell where status = 'oom' and batch = 64 and "
                                             "input_len = 2048")}  # fmt: skip
    assert oom, "the limit leaves no room for batch 64 x 2048 tokens"
    v = _verdict(engines_study, *hf, "--at", "batch=64,input=2048")
    assert {e["run_id"] for e in v["excluded"] if e["excluded"].startswith("OOM at batch 64 × input 2048")} == oom
    v = _verdict(engines_study, *hf, "--at", "batch=64,input=16")  # where every one of them fits
    assert sorted(e["name"] for e in v["ranked"]) == ["bf16 eager", "bf16 sdpa", "fp32 eager", "fp32 sdpa"]
    grid = _verdict(engines_study, *hf)
    assert sum(int(e["excluded"].split(" at ")[1].split()[0]) for e in grid["excluded"]
               if e["excluded"].startswith("OOM at ")) == len(oom)  # fmt: skip
    # every engine at the point they share, with agreement measured for all: exclusions follow the stored figures
    llama = [r for (r,) in rows(engines_study, "select id from run where engine = 'llama.cpp'")]
    v = _verdict(engines_study, *hf, *llama, "--at", "batch=1,input=16,output=2", "--min-quality", "agreement>=0.9")
    assert {e["name"] for e in v["excluded"]} >= {n for n in ("llama.cpp f32", "llama.cpp q8_0", "llama.cpp q4_0")}
    assert all(e["excluded"].startswith("not measured at batch 1 × input 16 × output 2") for e in v["excluded"]
               if e["name"].startswith("llama.cpp"))  # their grid had output 8  # fmt: skip
    for e in v["ranked"]:
        assert e["quality"]["agreement"] >= 0.9
    assert len(v["frontier"]) >= 1 and set(v["frontier"]) <= {e["name"] for e in v["ranked"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ranking_exclusions_and_missing_evidence_at_a_point(study):
    v = _verdict(study, "--at", "batch=2,input=16", "--min-quality", "agreement>=0.99")
    everyone = v["ranked"] + v["excluded"] + v["unverified"]
    assert sorted(e["name"] for e in everyone) == ["f32", "q4_0", "q8_0"]
    for e in everyone:  # each run's stored agreement decides, and the line says it
        agreement = e["quality"]["agreement"]
        if agreement < 0.99:
            assert e in v["excluded"] and e["excluded"] == f"agreement {agreement:.3g} < 0.99"
        else:
            assert e in v["ranked"]
    values = [e["value"] for e in v["ranked"]]
    assert values == sorted(values, reverse=True) and all(x > 0 for x in values)
    assert v["winner"].startswith(("winner: ", "tie: "))
    # a bound on a figure nobody measured: no one is ranked, each names the command that measures it
    v = _verdict(study, "--at", "batch=1,input=16", "--min-quality", "pass@1>=0.3")
    assert v["ranked"] == [] and v["winner"] == "no configuration meets every constraint with its evidence measured"
    for e in v["unverified"]:  # the command measures this configuration: its quant too
        assert e["missing"] == [f"pass@1 not measured: codebench-tui eval --metric pass@k --engine llama.cpp --model tiny "
                                f"--quant {e['name']}"]  # fmt: skip
    # a memory cap below every peak, and a point outside the grid
    v = _verdict(study, "--at", "batch=1,input=16", "--max-mem", "1MiB")
    assert all(e["excluded"].startswith("peak ") and e["excluded"].endswith("> 0.000977 GiB at batch 1 × input 16")
               for e in v["excluded"]) and len(v["excluded"]) == 3  # fmt: skip
    v = _verdict(study, "--at", "batch=64,input=16")
    assert all(e["excluded"].startswith("not measured at batch 64 × input 16 (measured: batch 1–2, input 16, output 8)")
               for e in v["excluded"])  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_where_each_configuration_wins_over_the_whole_grid(study):
    v = _verdict(study)
    assert v["point"] is None and len(v["grid"]) == 2  # batch 1 and 2 at input 16, output 8
    assert sum(v["wins"].values()) >= 2 and set(v["wins"]) == {"f32", "q8_0", "q4_0"}
    text = cli("verdict", db=study, env={"COLUMNS": "200"}, check=True).stdout
    assert "where each configuration wins: tok/s" in text and "wins at" in text


def test_a_title_wider_than_its_table_stays_on_one_line():
    """A grid whose winners have short names is narrower than its title; the title must not wrap to the table."""
    import io

    from rich.console import Console

    from store.tables import Table
    from tui.render import rich_table

    t = Table("where each configuration wins: tok/s", ["shape", "batch 1", "batch 2"], [["in 16 out 8", "f32", "f32"]],
              ["f32: wins at 2 of 2 point(s)"])  # fmt: skip
    console = Console(file=io.StringIO(), width=200)
    console.print(rich_table(t))
    lines = console.file.getvalue().splitlines()
    assert lines[0].rstrip() == t.title and any(line.strip() == t.notes[0] for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_an_identical_copy_ties_and_the_line_says_why(study, tmp_path):
    data = json.loads(cli("export", "last", "--format", "json", db=study, check=True).stdout)
    (run,) = data["runs"]
    twin = json.loads(json.dumps(run))
    twin.update(id="e" * 32, name="twin")
    data["runs"].append(twin)
    path = tmp_path / "twin.json"
    path.write_text(json.dumps(data))
    db = tmp_path / "twin.db"
    cli("import", str(path), db=db, check=True)
    v = _verdict(db, run["id"], "e" * 32, "--at", "batch=2,input=16")
    first, second = v["ranked"]
    assert second["tied"] and v["winner"].startswith("tie: ") and " ≈ " in v["winner"]
    assert first["tie"] == f"not significantly faster than {second['name']} (ratio 1.00, 95% CI 1.00–1.00)"


@pytest.fixture
def seed(tmp_path) -> Path:
    path = tmp_path / "seed001.db"
    shutil.copy(SEED, path)
    return path


def test_oom_cells_and_the_memory_models_word_outside_the_grid(seed):
    v = _verdict(seed, EAGER, FLASH, "--at", "batch=4,input=8192")
    assert [e["name"] for e in v["ranked"]] == ["sdpa-flash"] and v["winner"] == "winner: sdpa-flash"
    assert [(e["name"], e["excluded"]) for e in v["excluded"]] == [("eager", "OOM at batch 4 × input 8192")]
    assert v["frontier"] == ["sdpa-flash"]
    v = _verdict(seed, EAGER, FLASH, "--at", "batch=16,input=16384", "--max-mem", "80GiB")
    for e in v["excluded"]:
        assert e["excluded"].startswith("not measured at batch 16 × input 16384")
        assert "the memory model predicts" in e["excluded"]
    by_name = {e["name"]: e["excluded"] for e in v["excluded"]}
    assert by_name["eager"].endswith("> 80 GiB: it would not fit")  # eager's scores grow as input squared
    v = _verdict(seed, EAGER, FLASH)
    assert v["wins"] == {"sdpa-flash": 9, "eager": 0}
    assert any(e["excluded"].startswith("OOM at 3 point(s): batch 2 × input 16384") for e in v["excluded"])


@pytest.mark.parametrize("args, words", [
    (["--min-quality", "agreement>>1"], "--min-quality: 'agreement>>1' is not METRIC>=VALUE"),
    (["--at", "batch=x"], "--at: 'batch=x' is not batch=N"),
    (["--at", "batch=8,\x1b[2J=1"], "--at:"),
    (["--max-mem", "lots"], "not a size"),
    (["--objective", "speed"], "invalid choice"),
    (["--attainment", "2"], "--attainment must be above 0"),
    (["--slo", "ttft=soon"], "not a duration"),
])  # fmt: skip
def test_a_bad_constraint_is_one_line_and_writes_nothing(seed, args, words):
    proc = cli("verdict", *args, db=seed)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and words in err and "\n" not in err and "Traceback" not in err, proc.stderr
    assert "\x1b" not in err


def test_exports_name_the_evidence_and_keep_hostile_names_as_text(seed, tmp_path):
    import sqlite3

    con = sqlite3.connect(seed)
    with con:
        con.execute("update run set name=?, label=? where id like ?", ("\x1b]0;pwned\x07<script>alert(1)</script>|*x*",
                    "[red]\x1b[2J<script>label</script>", EAGER + "%"))  # fmt: skip
    con.close()
    md = cli("verdict", EAGER, FLASH, "--at", "batch=4,input=8192", "--format", "md", db=seed, check=True).stdout
    html = cli("verdict", EAGER, FLASH, "--at", "batch=4,input=8192", "--format", "html", db=seed, check=True).stdout
    text = cli("verdict", EAGER, FLASH, "--at", "batch=4,input=8192", db=seed, env={"COLUMNS": "200"}, check=True).stdout
    for out in (md, html, text):
        assert "\x1b" not in out and "\x07" not in out and "<script>" not in out
    assert "# codebench-tui verdict" in md and "| rank | configuration |" in md and "## Runs" in md
    assert "NVIDIA H100 80GB HBM3" in md and "winner: sdpa-flash" in md
    assert "<h1>codebench-tui verdict</h1>" in html and "&lt;script&gt;" in html
    out = tmp_path / "verdict.md"
    cli("verdict", EAGER, FLASH, "--format", "md", "-o", str(out), db=seed, check=True)
    assert out.read_text().startswith("# codebench-tui verdict")
    refused = cli("verdict", EAGER, "--format", "md", "-o", str(seed), db=seed)
    assert refused.returncode == 2 and "database" in refused.stderr


def test_the_verdict_screen_follows_its_fields(seed):
    """Through Pilot: Compare's `v` opens it on the runs compared; each edit decides again, a bad one says why."""
    import asyncio

    from tests.tui_support import fixed_check
    from tui.app import make_app
    from tui.screens.compare import CompareScreen

    async def drive() -> list[str]:
        app = make_app(str(seed), check=fixed_check, device="cpu", preload=False)
        seen = []
        async with app.run_test(size=(120, 40)) as pilot:
            await app.push_screen(CompareScreen([EAGER, FLASH]))
            for _ in range(100):
                await pilot.pause(0.05)
                if getattr(app.screen, "results", None):
                    break
            await pilot.press("v")
            await pilot.pause(0.2)
            screen = app.screen
            seen.append(" ".join(f"{k}:{n}" for k, n in sorted(screen.verdict.wins.items())))
            screen.query_one("#v-at").value = "batch=4,input=8192"
            await pilot.pause(0.2)
            seen.append(screen.verdict.winner_line())
            seen.append(str(screen.query_one("#v-error").render()))
            screen.query_one("#v-quality").value = "pass@1>=\x1b[2J"
            await pilot.pause(0.2)
            seen.append(str(screen.query_one("#v-error").render()))
            seen.append(screen.verdict.winner_line())  # the last good verdict stays
        return seen

    wins, winner, no_error, error, kept = asyncio.run(drive())
    assert wins == "eager:0 sdpa-flash:9" and winner == "winner: sdpa-flash" and no_error == ""
    assert "--min-quality" in error and "\x1b" not in error and kept == "winner: sdpa-flash"


def test_goodput_under_an_slo_and_energy_that_was_never_measured(tmp_path, utc):  # noqa: F811
    from tests.tui_support import fill_serving_store

    db = tmp_path / "serving.db"
    fill_serving_store(db)  # f32 and q4_0 served, TTFT growing with concurrency (q4_0 1.7x faster)
    v = _verdict(db, "--objective", "goodput", "--slo", "ttft=45ms", "--attainment", "0.5", "--at", "batch=4")
    # f32 at concurrency 4: TTFTs of 42, 46.2 and 50.4 ms in turn, so 3 of 8 requests meet 45 ms
    assert [(e["name"], e["excluded"]) for e in v["excluded"]] == [("f32", "SLO met by 37.5% of requests < 50%")]
    (q4,) = v["ranked"]
    assert q4["name"] == "q4_0" and q4["value"] > 0 and v["winner"] == "winner: q4_0"
    v = _verdict(db, "--objective", "joules_per_token", "--at", "batch=4")
    assert v["ranked"] == [] and len(v["unverified"]) == 2
    assert all(e["missing"] == ["energy not measured: J/token needs a GPU with NVML power readings"]
               for e in v["unverified"])  # fmt: skip


H100 = ROOT / "docs/results/2026-12-06-verdict/h100-precisions.db"


def test_a_real_gpu_study_ties_excludes_by_agreement_and_explains_an_interleaved_oom(tmp_path):
    """starcoder2-3b:random at fp32, bf16 and fp16 on an H100 (docs/results/2026-12-06-verdict)."""
    db = tmp_path / "h100.db"
    shutil.copy(H100, db)
    v = _verdict(db, "--at", "batch=8,input=2048")
    assert v["winner"] == "tie: bf16 ≈ fp16 (no significant difference)"
    assert v["ranked"][0]["tie"] == "not significantly faster than fp16 (ratio 1.21, 95% CI 0.83–1.77)"
    v = _verdict(db, "--at", "batch=8,input=2048", "--min-quality", "agreement>=0.99")
    assert v["winner"] == "winner: fp32"
    assert sorted(e["excluded"] for e in v["excluded"]) == ["agreement 0.703 < 0.99", "agreement 0.906 < 0.99"]
    v = _verdict(db, "--objective", "joules_per_token", "--at", "batch=32,input=2048")
    assert [e["name"] for e in v["ranked"]] == ["bf16", "fp32"]
    (fp16,) = v["excluded"]
    assert fp16["excluded"] == ("OOM at batch 32 × input 2048, with 36.1 GiB held beside it by the interleaved runs; "
                                "the memory model predicts 12 GiB: it may fit alone (--schedule sequential)")  # fmt: skip
