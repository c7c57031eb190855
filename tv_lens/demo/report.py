"""The demo's report: one self-contained HTML file a researcher can share, plus the CSVs behind it.

Takes results (:class:`tv_lens.demo.suite.SuiteResult` per suite, phase curves), never a model: styled tables with 95% CIs,
paired differences, the layer choice, Fig.-11 sweep curves per task, Fig.-3 phase curves sized to the page, a
gallery of image queries (thumbnails embedded as base64) with each method's answer beside the label, and a
"what this shows / does not show" section whose every sentence is chosen from the numbers.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import plot
from ..errors import InputError
from ..io import atomic_write_text
from .suite import BASELINES, METHODS, ROW_NAMES

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em}
table.tbl{border-collapse:collapse;margin:.8em 0;font-size:.85em;font-variant-numeric:tabular-nums}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:.3em .55em;text-align:right;white-space:nowrap}
table.tbl th{background:#f4f6f8;text-align:center}table.tbl td:first-child,table.tbl th:first-child{text-align:left}
table.tbl tr.baseline td{background:#fafafa;color:#666}td.pos{background:#e6f4ea}td.neg{background:#fce8e6}
.meta{color:#555;font-size:.9em}.note{color:#555;font-size:.85em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;display:flex;gap:.6em;font-size:.8em}
.card img{width:72px;height:72px;object-fit:contain;image-rendering:pixelated;border:1px solid #eee}
.card .label{font-weight:600}.ok{color:#137333}.bad{color:#a50e0e}
.figure{width:100%;margin:1em 0}ul.findings li{margin:.3em 0}
"""

GALLERY_PER_TASK = 4


def _fmt_ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"{f.format(mean)} <span class='note'>[{f.format(low)}, {f.format(high)}]</span>"


def table_html(suite, metric: str) -> str:
    """Methods × tasks with CIs; the majority and no-context rows are marked as baselines."""
    rows = suite.cells[suite.cells["metric"] == metric]
    cols = suite.tasks + ["Avg"]
    out = ["<table class='tbl'><tr><th>method</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for m in METHODS:
        cls = " class='baseline'" if m in BASELINES else ""
        cells = []
        for t in cols:
            r = rows[(rows["method"] == m) & (rows["task"] == t)].iloc[0]
            cells.append(f"<td>{_fmt_ci(r['mean'], r['low'], r['high'])}</td>")
        out.append(f"<tr{cls}><td>{html.escape(ROW_NAMES[m])}</td>{''.join(cells)}</tr>")
    return "\n".join(out) + "</table>"


def diff_html(suite, metric: str) -> str:
    """Paired differences with CIs; green when the CI is above 0, red when below."""
    rows = suite.diffs[suite.diffs["metric"] == metric]
    cols = suite.tasks + ["Avg"]
    out = ["<table class='tbl'><tr><th>difference</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
           + "</tr>"]
    for pair in dict.fromkeys(rows["pair"]):
        cells = []
        for t in cols:
            r = rows[(rows["pair"] == pair) & (rows["task"] == t)].iloc[0]
            cls = "pos" if r["low"] > 0 else "neg" if r["high"] < 0 else ""
            cells.append(f"<td class='{cls}'>{_fmt_ci(r['mean'], r['low'], r['high'], signed=True)}</td>")
        out.append(f"<tr><td>{html.escape(pair)}</td>{''.join(cells)}</tr>")
    return "\n".join(out) + "</table>"


# ---------------------------------------------------------------------------------------------- findings
def _cell(suite, method: str, task: str = "Avg", metric: str = "exact_match") -> pd.Series:
    rows = suite.cells
    return rows[(rows["method"] == method) & (rows["task"] == task) & (rows["metric"] == metric)].iloc[0]


def _diff(suite, a: str, b: str, task: str = "Avg", metric: str = "exact_match") -> pd.Series:
    rows = suite.diffs
    return rows[(rows["a"] == a) & (rows["b"] == b) & (rows["task"] == task) & (rows["metric"] == metric)].iloc[0]


def _compare(suite, a: str, b: str, what_a: str, what_b: str) -> tuple[str, str]:
    """(verdict, sentence) for the average exact-match difference a − b."""
    d = _diff(suite, a, b)
    span = f"{d['mean']:+.2f} exact match [95% CI {d['low']:+.2f}, {d['high']:+.2f}]"
    if d["low"] > 0:
        return "shows", f"{what_a} beats {what_b} on average: {span}."
    if d["high"] < 0:
        return "shows", f"{what_a} is worse than {what_b} on average: {span}."
    return "not", f"{what_a} and {what_b} cannot be told apart on average: {span} includes 0."


def findings(results: dict, meta: dict) -> dict[str, list[str]]:
    """``{"shows": [...], "not": [...]}``: sentences chosen from the numbers (CIs decide every verdict)."""
    out: dict[str, list[str]] = {"shows": [], "not": []}
    for name, suite in results.items():
        prefix = f"<b>{html.escape(name)} suite</b>: "
        for a, b, wa, wb in (("xpatch", "xbase", "text-ICL xPatch", "text-ICL xBase"),
                             ("patch", "base", "image-ICL Patch", "image-ICL Base"),
                             ("xpatch", "majority", "text-ICL xPatch", "the majority label")):
            verdict, sentence = _compare(suite, a, b, wa, wb)
            out[verdict].append(prefix + sentence)
        wins = [t for t in suite.tasks if _diff(suite, "xpatch", "xbase", t)["low"] > 0]
        losses = [t for t in suite.tasks if _diff(suite, "xpatch", "xbase", t)["high"] < 0]
        out["shows" if wins or losses else "not"].append(
            prefix + f"per task, xPatch − xBase has a CI above 0 on {len(wins)} of {len(suite.tasks)} tasks"
            + (f" ({', '.join(wins)})" if wins else "") + f" and below 0 on {len(losses)}"
            + (f" ({', '.join(losses)})" if losses else "") + ".")
        best = max((_cell(suite, m)["mean"], m) for m in ("base", "xbase", "patch", "xpatch"))
        majority = _cell(suite, "majority")
        if best[0] < 0.2:
            out["not"].append(prefix + f"the model barely does these tasks on images: the best method "
                              f"({best[1]}) averages {best[0]:.2f} exact match (majority label "
                              f"{majority['mean']:.2f}), so differences between methods are small in absolute terms.")
        gap = _cell(suite, "xpatch", metric="first_token")["mean"] - _cell(suite, "xpatch")["mean"]
        if gap > 0.1:
            out["not"].append(prefix + f"xPatch's first-token accuracy is {gap:.2f} above its exact match: part of "
                              "the paper's metric here is a prefix match of the first token, not the answer.")
    if not out["shows"]:
        out["shows"].append("Nothing at this sample size: every comparison's 95% CI includes 0 (see below).")
    if "reference" in str(meta.get("model", "")):
        out["not"].append("This model's vision side was trained to make image tokens look like the entity's name to "
                          "the LM (docs/reference_vlm.md), so text→image transfer is partly built in; these numbers "
                          "test the toolkit on real weights, not the paper's claim about VLMs trained on captions.")
    return out


# ---------------------------------------------------------------------------------------------- gallery
def _thumbnail(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='query image' src='data:image/png;base64,{data}'>"


def gallery_html(suite, per_task: int = GALLERY_PER_TASK, seed: int = 0) -> str:
    """Test image queries of the first seed: thumbnail, label, and each method's answer (✓ exact match)."""
    preds = suite.result.predictions
    preds = preds[preds["seed"] == preds["seed"].min()] if seed is None else preds[preds["seed"] == seed]
    cards = []
    for t in suite.tasks:
        rows = preds[preds["task"] == t]
        for query in list(dict.fromkeys(rows["query"]))[:per_task]:
            q = rows[rows["query"] == query]
            label = q["label"].iloc[0]
            lines = []
            for method in ("no_context", "xbase", "xpatch", "base", "patch"):
                r = q[q["method"] == method]
                if r.empty:
                    continue
                answer = str(r["answer"].iloc[0]).strip().split("\n")[0]
                ok = bool(r["exact_match"].iloc[0])
                lines.append(f"<div class='{'ok' if ok else 'bad'}'>{'✓' if ok else '✗'} "
                             f"{html.escape(ROW_NAMES[method])}: <code>{html.escape(answer)}</code></div>")
            cards.append(f"<div class='card'>{_thumbnail(suite.items.get(t, {}).get(query))}<div>"
                         f"<div class='note'>{html.escape(t)} · {html.escape(str(query))}</div>"
                         f"<div class='label'>label: {html.escape(label)}</div>{''.join(lines)}</div></div>")
    return "<div class='gallery'>" + "\n".join(cards) + "</div>"


# ---------------------------------------------------------------------------------------------- page
def _figure(fig, first: bool, height: int = 420) -> str:
    fig.update_layout(autosize=True, width=None, height=height, margin={"l": 50, "r": 20, "t": 60, "b": 40})
    return ("<div class='figure'>" + fig.to_html(full_html=False, include_plotlyjs=True if first else False,
                                                 default_width="100%", default_height=f"{height}px",
                                                 config={"responsive": True, "displaylogo": False}) + "</div>")


def write_report(out: Path | str, results: dict, curves: dict, meta: dict, sections: Sequence[str] = ()) -> Path:
    """Write ``report.html`` and the CSVs into ``out``; returns the report's path.

    Args:
        results: ``{suite name: SuiteResult}``.
        curves: ``{"text": PhaseCurves, "image": PhaseCurves}``.
        meta: shown at the top (model, items, seeds, minutes...).
        sections: HTML fragments appended at the end, in order (the demo's "Looking at the image" maps, from
            :meth:`tv_lens.image_report.ImageSection.to_html` with ``include_plotlyjs=False``: the page loads
            plotly.js with its first figure, so a fragment needs a figure before it).

    Raises:
        InputError: a section that is not a string, or sections on a page with no figure to load plotly.js.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = findings(results, meta)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>tv_lens demo report</title><style>{CSS}</style></head><body>",
             "<h1>Task vectors are cross-modal — on the reference VLM</h1>",
             "<p class='meta'>" + " · ".join(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}"
                                            for k, v in meta.items()) + "</p>",
             "<p class='note'>Image queries on the test split. Each cell: mean over seeds and items with its 95% "
             "bootstrap interval (seeds and items resampled). Exact match: the whole greedy answer (up to the first "
             "newline) equals the label. First token: the paper's prefix match of the first generated token.</p>",
             "<h2>What this shows</h2><ul class='findings'>"
             + "".join(f"<li>{s}</li>" for s in found["shows"]) + "</ul>",
             "<h2>What this does not show</h2><ul class='findings'>"
             + "".join(f"<li>{s}</li>" for s in found["not"]) + "</ul>"]
    first = True
    for name, suite in results.items():
        parts += [f"<h2>{html.escape(name)} suite: exact match</h2>", table_html(suite, "exact_match"),
                  "<h3>Paired differences (exact match; the same seed and item draws for both methods)</h3>",
                  diff_html(suite, "exact_match"),
                  "<h3>First-token accuracy (the paper's metric), same runs</h3>", table_html(suite, "first_token"),
                  "<h3>Layer choice on validation</h3><p class='note'>The best layers of the first-token sweep, "
                  "re-scored by exact match (first seed's vectors); the selected layer is the exact-match argmax."
                  f" Selected: xpatch {suite.best['xpatch']}, patch {suite.best['patch']}.</p>",
                  suite.layer_exact.round(3).to_html(index=False, classes="tbl", border=0)]
        for method, label in (("xpatch", "text-ICL xPatch"), ("patch", "image-ICL Patch")):
            fig = plot.sweep(suite.sweeps[method], baselines={"xbase": suite.result, "no_context": suite.result},
                             title=f"{name} suite, {label}: first-token accuracy per patched layer (validation); "
                                   f"baselines on test")
            n_rows = (len(suite.tasks) + 2) // 3
            parts.append(_figure(fig, first, height=260 * n_rows + 80))
            first = False
        parts += [f"<h3>Gallery: image queries ({html.escape(name)} suite, seed 0)</h3>", gallery_html(suite)]
        atomic_write_text(out / f"table_{name}_exact_match.csv", suite.table("exact_match").to_csv())
        atomic_write_text(out / f"table_{name}_first_token.csv", suite.table("first_token").to_csv())
        atomic_write_text(out / f"cells_{name}.csv", suite.cells.to_csv(index=False))
        atomic_write_text(out / f"differences_{name}.csv", suite.diffs.to_csv(index=False))
        atomic_write_text(out / f"predictions_{name}.csv", suite.result.predictions.to_csv(index=False))
        atomic_write_text(out / f"layers_{name}.csv", suite.layer_exact.to_csv(index=False))
        for method, sweep in suite.sweeps.items():
            atomic_write_text(out / f"sweep_{name}_{method}.csv", sweep.scores.to_csv(index=False))
    if curves:
        parts.append(f"<h2>Phase curves (Figure 3), {html.escape(str(meta.get('phase task', '')))}</h2>")
        parts.append(_figure(plot.phases({f"{m} ICL": c for m, c in curves.items()}), first, height=440))
        first = False
    if sections and first:
        raise InputError("write_report(sections=...): the page has no figure to load plotly.js before the sections; "
                         "pass results or curves, or make the fragments with include_plotlyjs=True.")
    for section in sections:
        if not isinstance(section, str):
            raise InputError(f"write_report(sections=...) takes HTML strings, not {type(section).__name__}; use "
                             "ImageSection.to_html(include_plotlyjs=False).")
        parts.append(section)
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
