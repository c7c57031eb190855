"""benchmarks/run.py's peer check compares like with like and stops on a mismatch (issue 27)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
_SPEC = importlib.util.spec_from_file_location("bench_run", _RUN)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_one_position_caches_compare_row_by_row_not_by_broadcasting():
    g = torch.Generator().manual_seed(0)
    ours = torch.randn(4, 1, 8, generator=g) * 100           # [batch, 1, d]: our position axis kept
    theirs = ours[:, 0].clone()                                # [batch, d]: the peer's pos_slice=-1
    assert (theirs - ours).abs().max() > 1                      # what broadcasting measured: rows against rows
    assert bench.max_difference("cache", bench.one_position(ours), bench.one_position(theirs)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        bench.max_difference("cache", ours, theirs)
    with pytest.raises(ValueError, match="does not compute the same thing"):
        bench.max_difference("cache", bench.one_position(ours), theirs + 1.0)
    with pytest.raises(ValueError, match="one-position"):
        bench.one_position(torch.zeros(2, 3, 8))
