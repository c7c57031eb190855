"""One switch for every tv_lens progress bar, and no ipywidgets warning in a notebook (issue 27)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
from tqdm.std import tqdm as text_bar

import tv_lens as tvl
from tv_lens import progress
from tv_lens import prompts as P
from tv_lens.errors import InputError
from tv_lens.testing import tiny_model


@pytest.fixture
def restore():
    yield
    progress.set_enabled(True)


def test_global_switch_silences_every_bar(restore, capsys):
    model = tiny_model("llama").hooked()
    prompts = P.icl([tvl.tasks.TaskItem(x, y) for x, y in [("a", "b"), ("c", "d"), ("e", "f")]], n_shots=1)
    tvl.extract_task_vector(model, prompts, batch_size=1, progress=True)
    assert "%" in capsys.readouterr().err                              # a bar by default
    progress.set_enabled(False)
    assert not progress.enabled() and progress.tqdm(range(3)).disable
    tvl.extract_task_vector(model, prompts, batch_size=1, progress=True)
    assert capsys.readouterr().err == ""
    progress.set_enabled(True)
    assert not progress.tqdm(range(3), disable=False, file=None).disable
    assert progress.tqdm(range(3), disable=True).disable             # a call's own progress=False still wins
    with pytest.raises(InputError):
        progress.set_enabled("no")


def test_notebook_without_ipywidgets_gets_a_text_bar_and_no_warning(monkeypatch):
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress.tqdm(range(2), disable=True)
    assert type(bar) is text_bar
