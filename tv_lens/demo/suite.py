"""The demo's suites and what one suite's results are: the methods' rows, :class:`SuiteResult`, its bootstrap CIs.

Results only, never a model: :mod:`tv_lens.demo.run` produces a :class:`SuiteResult`, :mod:`tv_lens.demo.report`
draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..evaluate import EvalResult, SweepResult
from ..methods import BY_NAME
from ..stats import N_BOOTSTRAP, bootstrap_draws, percentile_ci, score_matrix
from ..tasks import PAPER_TASKS, list_tasks

#: Tokens generated per answer in the demo (exact match needs the whole label).
MAX_NEW_TOKENS = 8
SEEDS = (0, 1, 2)
#: Layers (best by first-token accuracy on val) re-scored by exact match before the final choice.
EXACT_MATCH_CANDIDATES = 4

#: The demo's rows (image queries); their names come from the method table (:mod:`tv_lens.methods`).
METHODS = ("majority", "no_context", "base", "xbase", "patch", "xpatch")
QUERY_MODALITY = "image"
ROW_NAMES = {m: BY_NAME[m].label(QUERY_MODALITY) for m in METHODS}
#: The baselines (shaded in the report).
BASELINES = tuple(m for m in METHODS if BY_NAME[m].baseline)
PAIRS = (("xpatch", "xbase"), ("patch", "base"), ("xpatch", "no_context"), ("xpatch", "majority"))

ci = percentile_ci   # the demo's old name for the 95% percentile interval (now in tv_lens.stats)


def reference_tasks() -> list[str]:
    """The reference suite: every shipped task that is not one of the paper's six."""
    return [name for name in list_tasks() if name not in PAPER_TASKS]


def suites() -> dict[str, list[str]]:
    """``{"reference": the tasks chosen for SmolLM2, "paper": the paper's six}``, in the order the demo runs them:
    the reference suite (the one that shows the effect on this model) first."""
    return {"reference": reference_tasks(), "paper": list(PAPER_TASKS)}


@dataclass
class SuiteResult:
    """Everything one suite produced: per-(method, task) estimates with CIs, paired differences, layers, sweeps."""

    name: str
    tasks: list[str]
    result: EvalResult
    best: dict[str, int]
    sweeps: dict[str, SweepResult]
    layer_exact: pd.DataFrame
    cells: pd.DataFrame = field(default=None)        # method, task, metric, mean, low, high
    diffs: pd.DataFrame = field(default=None)        # pair, task, metric, mean, low, high
    items: dict = field(default_factory=dict)        # task -> {input: image path}

    def table(self, metric: str = "exact_match", fmt: str = "{:.2f} [{:.2f}, {:.2f}]") -> pd.DataFrame:
        """Methods × tasks (+ Avg): ``mean [low, high]`` strings."""
        rows = self.cells[self.cells["metric"] == metric]
        table = rows.assign(cell=[fmt.format(a, b, c) for a, b, c in zip(rows["mean"], rows["low"], rows["high"])])
        table = table.pivot(index="method", columns="task", values="cell")
        table = table.loc[[m for m in METHODS if m in table.index], self.tasks + ["Avg"]]
        table.index = [ROW_NAMES[m] for m in table.index]
        return table

    def __repr__(self) -> str:
        return (f"SuiteResult({self.name}: {len(self.tasks)} tasks, layers {self.best})\n"
                + self.table("exact_match").to_string())

    def _repr_html_(self) -> str:
        return (f"<b>SuiteResult</b> {self.name} (exact match, mean [95% CI]; layers {self.best})"
                + self.table("exact_match").to_html())

    def diff_table(self, metric: str = "exact_match") -> pd.DataFrame:
        rows = self.diffs[self.diffs["metric"] == metric]
        table = rows.assign(cell=[f"{a:+.2f} [{b:+.2f}, {c:+.2f}]" for a, b, c in
                                  zip(rows["mean"], rows["low"], rows["high"])])
        return table.pivot(index="pair", columns="task", values="cell").loc[
            [f"{a} − {b}" for a, b in PAIRS], self.tasks + ["Avg"]]


def summarize(suite: SuiteResult, n_boot: int = N_BOOTSTRAP) -> SuiteResult:
    """Fill ``cells`` and ``diffs`` of ``suite`` from its predictions (:func:`tv_lens.stats.bootstrap_draws`)."""
    cells, diffs = [], []
    for metric in ("exact_match", "correct"):
        point, draws = bootstrap_draws(suite.result.predictions, suite.tasks, METHODS, metric, n_boot=n_boot)
        name = "exact_match" if metric == "exact_match" else "first_token"
        for (m, t), value in point.items():
            cells.append({"method": m, "task": t, "metric": name, "mean": value, **_ci_dict(draws[(m, t)])})
        for a, b in PAIRS:
            for t in suite.tasks + ["Avg"]:
                delta = draws[(a, t)] - draws[(b, t)]
                diffs.append({"pair": f"{a} − {b}", "a": a, "b": b, "task": t, "metric": name,
                              "mean": point[(a, t)] - point[(b, t)], **_ci_dict(delta)})
    suite.cells, suite.diffs = pd.DataFrame(cells), pd.DataFrame(diffs)
    return suite


def _ci_dict(values: np.ndarray) -> dict:
    low, high = percentile_ci(values)
    return {"low": low, "high": high}


__all__ = ["BASELINES", "EXACT_MATCH_CANDIDATES", "MAX_NEW_TOKENS", "METHODS", "N_BOOTSTRAP", "PAIRS",
           "QUERY_MODALITY", "ROW_NAMES", "SEEDS", "SuiteResult", "bootstrap_draws", "ci", "reference_tasks",
           "score_matrix", "suites", "summarize"]
