"""The demo's statistics and report (synthetic results), the report in a real headless browser, and the cross-modal
path end to end on the reference VLM's real weights."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tv_lens import demo as D
from tv_lens import report as R
from tv_lens import tasks as tvl_tasks
from tv_lens.errors import InputError
from tv_lens.evaluate import EvalResult, SweepResult
from tv_lens.lens import PhaseCurves

IMAGE = Path(__file__).resolve().parents[1] / "tv_lens" / "data" / "images" / "flags" / "fr.png"


def fake_suite(rates: dict[str, float], tasks=("t-one", "t-two"), n_items: int = 40, seeds=(0, 1, 2),
               name: str = "synthetic") -> D.SuiteResult:
    """A suite whose method ``m`` is exactly right on a fraction ``rates[m]`` of items (same items every seed)."""
    preds, scores = [], []
    for t in tasks:
        for seed in seeds:
            for m in D.METHODS:
                k = round(rates[m] * n_items)
                for i in range(n_items):
                    ok = i < k
                    preds.append({"task": t, "method": m, "seed": seed, "query": f"item{i}", "label": f"L{i}",
                                  "first_token": f"L{i}" if ok else "x", "answer": f"L{i}" if ok else "x y",
                                  "correct": ok, "exact_match": ok})
                scores.append({"task": t, "method": m, "seed": seed, "accuracy": k / n_items,
                               "exact_match": k / n_items})
    sweep_rows = [{"task": t, "seed": s, "layer": layer, "accuracy": 0.1 * (layer % 5)}
                  for t in tasks for s in seeds for layer in range(6)]
    sweeps = {m: SweepResult(pd.DataFrame(sweep_rows), best=4) for m in ("xpatch", "patch")}
    layer_exact = pd.DataFrame([{"method": "xpatch", "layer": 4, "val_first_token": 0.4, "val_exact_match": 0.3}])
    suite = D.SuiteResult(name=name, tasks=list(tasks), result=EvalResult(pd.DataFrame(scores), pd.DataFrame(preds)),
                          best={"xpatch": 4, "patch": 4}, sweeps=sweeps, layer_exact=layer_exact,
                          items={t: {f"item{i}": str(IMAGE) for i in range(n_items)} for t in tasks})
    return D.summarize(suite, n_boot=300)


def fake_curves() -> PhaseCurves:
    import torch

    rows = [{"layer": layer, "set": s, "mean": 0.1 * layer / 5 * (k + 1), "std": 0.01, "sem": 0.01,
             "ci_low": 0.0, "ci_high": 0.2, "n": 5} for layer in range(6) for k, s in enumerate(("input", "task"))]
    return PhaseCurves(frame=pd.DataFrame(rows), per_prompt=torch.zeros(5, 6, 2), sets=["input", "task"],
                       layers=list(range(6)), token_sets={}, top1_ids=torch.zeros(5, 6, dtype=torch.long),
                       token_strings=[])


RATES_WIN = {"majority": 0.05, "no_context": 0.0, "base": 0.3, "xbase": 0.2, "patch": 0.5, "xpatch": 0.6}
RATES_TIE = {"majority": 0.05, "no_context": 0.0, "base": 0.3, "xbase": 0.3, "patch": 0.3, "xpatch": 0.3}


# ---------------------------------------------------------------------------------------------- statistics
def test_cells_hold_the_mean_and_a_ci_around_it():
    suite = fake_suite(RATES_WIN)
    cells = suite.cells[suite.cells["metric"] == "exact_match"].set_index(["method", "task"])
    assert cells.loc[("xpatch", "t-one"), "mean"] == pytest.approx(0.6)
    assert cells.loc[("xpatch", "Avg"), "mean"] == pytest.approx(0.6)
    assert (cells["low"] <= cells["mean"] + 1e-9).all() and (cells["mean"] <= cells["high"] + 1e-9).all()
    assert cells.loc[("xpatch", "t-one"), "high"] - cells.loc[("xpatch", "t-one"), "low"] > 0.1  # items vary


def test_paired_difference_has_a_ci_that_excludes_zero_only_when_methods_differ():
    win = fake_suite(RATES_WIN).diffs.set_index(["pair", "task", "metric"])
    row = win.loc[("xpatch − xbase", "Avg", "exact_match")]
    assert row["mean"] == pytest.approx(0.4) and row["low"] > 0
    tie = fake_suite(RATES_TIE).diffs.set_index(["pair", "task", "metric"])
    row = tie.loc[("xpatch − xbase", "Avg", "exact_match")]
    assert row["mean"] == 0 and row["low"] <= 0 <= row["high"]


def test_table_puts_majority_in_every_suite_and_formats_the_ci():
    table = fake_suite(RATES_WIN).table("exact_match")
    assert list(table.index) == [D.ROW_NAMES[m] for m in D.METHODS]
    assert table.loc["Random (majority label)", "Avg"].startswith("0.05 [")
    assert list(table.columns) == ["t-one", "t-two", "Avg"]
    suite = fake_suite(RATES_WIN)
    assert "Text ICL xPatch" in repr(suite) and "0.60 [" in suite._repr_html_()


def test_findings_follow_the_numbers_not_fixed_text():
    meta = {"model": "tv_lens reference VLM"}
    win = R.findings({"s": fake_suite(RATES_WIN)}, meta)
    tie = R.findings({"s": fake_suite(RATES_TIE)}, meta)
    assert any("text-ICL xPatch beats text-ICL xBase" in s for s in win["shows"])
    assert not any("xPatch beats text-ICL xBase" in s for s in tie["shows"] + tie["not"])
    assert any("cannot be told apart" in s and "xBase" in s for s in tie["not"])
    assert not any("built in" in s for s in R.findings({"s": fake_suite(RATES_TIE)}, {"model": "other"})["not"])


def test_gallery_embeds_thumbnails_and_marks_each_answer():
    page = R.gallery_html(fake_suite(RATES_WIN))
    assert page.count("data:image/png;base64,") == 2 * R.GALLERY_PER_TASK
    assert "✓ Text ICL xPatch: <code>L0</code>" in page and "label: L0" in page


# ---------------------------------------------------------------------------------------------- the page, in a browser
def write_fake_report(tmp_path: Path, sections=()) -> Path:
    results = {"paper": fake_suite(RATES_TIE, name="paper"), "reference": fake_suite(RATES_WIN, name="reference")}
    return R.write_report(tmp_path / "out", results, {"text": fake_curves(), "image": fake_curves()},
                          {"model": "tv_lens reference VLM", "minutes": 0.1, "phase task": "t-one"},
                          sections=sections)


def image_section_html() -> str:
    """The demo's "Looking at the image" fragment, made by the real code on a tiny LLaVA (two image queries)."""
    from tv_lens import prompts
    from tv_lens.image_report import image_maps_section
    from tv_lens.testing import random_image, tiny_model

    model = tiny_model("llava").hooked()
    items = [{"input": f"c{i}", "output": f"a{i}", "image": random_image(32, 32, seed=i)} for i in range(2)]
    return image_maps_section(model, prompts.queries(items, modality="image"), layer=1).to_html()


def test_report_appends_sections_after_its_figures_and_refuses_what_it_cannot_place(tmp_path):
    fragment = "<h2>Looking at the image (layer 3)</h2><p>maps</p>"
    text = write_fake_report(tmp_path, sections=[fragment]).read_text()
    assert text.index(fragment) > text.rindex('class="plotly-graph-div"') and text.endswith("</body></html>")
    with pytest.raises(InputError, match="HTML strings"):
        write_fake_report(tmp_path, sections=[object()])
    with pytest.raises(InputError, match="no figure to load plotly.js"):
        R.write_report(tmp_path / "bare", {}, {}, {"model": "m"}, sections=[fragment])


def test_report_writes_the_csvs_beside_the_page(tmp_path):
    path = write_fake_report(tmp_path)
    names = {p.name for p in path.parent.iterdir()}
    assert {"report.html", "table_reference_exact_match.csv", "differences_paper.csv",
            "predictions_reference.csv", "sweep_paper_xpatch.csv"} <= names
    text = path.read_text()
    assert text.count('class="plotly-graph-div"') == 5 and text.count("Plotly.newPlot(") >= 5


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_loads_in_headless_chromium_without_console_errors_and_draws_its_figures(tmp_path):
    path = write_fake_report(tmp_path, sections=[image_section_html()])
    # A probe appended to the page: after load, it records console errors, uncaught errors, and how many plotly
    # figures drew an SVG, into the DOM that --dump-dom prints.
    probe = """<script>
    window.__errors = [];
    window.addEventListener('error', e => window.__errors.push(String(e.message)));
    const origError = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
    window.addEventListener('load', () => setTimeout(() => {
      const drawn = document.querySelectorAll('.plotly-graph-div .main-svg').length;
      const figs = document.querySelectorAll('.plotly-graph-div').length;
      const imgs = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
      const pre = document.createElement('pre'); pre.id = 'probe';
      pre.textContent = JSON.stringify({errors: window.__errors, drawn, figs, imgs,
                                        width: document.documentElement.scrollWidth});
      document.body.appendChild(pre);
    }, 1500));
    </script>"""
    html = path.read_text().replace("<head>", "<head>" + probe, 1)
    probed = path.with_name("probed.html")
    probed.write_text(html)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
           "--window-size=1280,900", "--dump-dom", probed.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    state = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"'))
    assert state["errors"] == []
    assert state["figs"] == 5 + 4 and state["drawn"] >= 5 + 4  # every figure drew its SVG, the image maps' too
    assert state["imgs"] == 2 * 2 * R.GALLERY_PER_TASK          # every thumbnail decoded
    assert state["width"] <= 1280                               # sized to the page: no horizontal scroll


# ---------------------------------------------------------------------------------------------- real weights
@pytest.fixture(scope="module")
def reference_model():
    import torch

    torch.set_grad_enabled(False)
    yield D.load_model()
    torch.set_grad_enabled(True)


#: name-lower, layer 21: the exact-match argmax on 16 val image queries among the 4 best first-token layers
#: (20: 0.75, 21: 0.81, 22: 0.75, 23: 0.38; first-token sweep 0.00 at layers 0-17, 0.94 at 21).
XPATCH_LAYER = 21
#: Measured with the same code as the test (24 test image queries, seed 0, CPU float32): exact match xPatch 0.79
#: (19/24), no-context 0.00, xBase 0.21 (5/24); first token 0.92 / 0.00 / 0.42. The smaller gap is 0.58; the test
#: asks for 0.25, under half of it, so that a numerics change on another CPU does not flip it while a broken patch
#: (xPatch ≈ no-context) or a vector from the wrong place (xPatch ≈ xBase or below) still fails.
MARGIN = 0.25


def test_text_icl_vector_patched_into_image_queries_does_name_lower(reference_model):
    """The cross-modal path end to end on one task the model can do (name-lower: "France" flag -> "france"):
    a text-ICL vector from 16 val prompts, patched at layer 21 into contextless IMAGE queries, beats both the bare
    image query and five text demos in context (xBase) by at least MARGIN exact match on 24 test images."""
    from tv_lens.evaluate import evaluate
    from tv_lens.prompts import icl
    from tv_lens.tasks import load
    from tv_lens.vectors import extract_task_vector

    model = reference_model
    task = load("name-lower", n_val=16, n_test=24, seed=0).with_images()
    vec = extract_task_vector(model, icl(task.val, n_shots=5, modality="text", pool=task.train, seed=0),
                              task="name-lower", seed=0, progress=False)
    assert vec.modality == "text"
    res = evaluate(model, task, ["no_context", "xbase", "xpatch"], vectors={"xpatch": vec}, layer=XPATCH_LAYER,
                   query_modality="image", seeds=(0,), max_new_tokens=D.MAX_NEW_TOKENS, progress=False)
    exact = res.scores.set_index("method")["exact_match"]
    assert exact["xpatch"] - exact["no_context"] >= MARGIN, exact.to_dict()
    assert exact["xpatch"] - exact["xbase"] >= MARGIN, exact.to_dict()


def test_demo_runs_the_reference_suite_first_then_the_paper_suite():
    """The suite that shows the effect on this model comes first: in `tv-lens demo`, `make demo` and the report."""
    assert list(D.suites()) == ["reference", "paper"]
    assert D.suites()["paper"] == list(tvl_tasks.PAPER_TASKS) and not set(D.suites()["reference"]) & set(
        tvl_tasks.PAPER_TASKS)


def test_demo_package_has_no_circle_and_keeps_the_old_names():
    """demo/ = suite (results) <- report (page) <- run (model): the report reads the suite, never the runner."""
    import ast

    from tv_lens.demo import report, run, suite

    imported = {name: {node.module for node in ast.walk(ast.parse(Path(mod.__file__).read_text()))
                       if isinstance(node, ast.ImportFrom) and node.level == 1}
                for name, mod in {"suite": suite, "report": report, "run": run}.items()}
    assert imported["suite"] == set() and imported["report"] == {"suite"} and imported["run"] == {"report", "suite"}
    assert R.write_report is report.write_report and D.SuiteResult is suite.SuiteResult


def test_demo_refuses_a_dtype_it_cannot_honour():
    from tv_lens.errors import InputError

    with pytest.raises(InputError, match="not a torch floating dtype"):
        D.load_model(dtype="int8")
    with pytest.raises(InputError, match="float32, bfloat16"):
        D.load_model(dtype="float33")


def test_demo_refuses_an_unknown_suite_before_loading_anything(tmp_path):
    from tv_lens.errors import InputError

    with pytest.raises(SystemExit):
        D.main(["--suite", "nope", "--out", str(tmp_path)])
    import argparse

    with pytest.raises(InputError, match="choose both, reference, paper"):
        D.run_demo(argparse.Namespace(suite="nope", out=str(tmp_path), quick=True, dtype="float32x"))


def test_cli_demo_suite_choices_match_the_demo_and_reject_others(tmp_path, capsys):
    """`tv-lens demo --suite` offers exactly the demo's suites; a wrong one exits 2 naming the choices."""
    from tv_lens import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--suite", "nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    offered = ", ".join(repr(name) for name in ("both", *D.suites()))
    assert "--suite" in err and offered in err
