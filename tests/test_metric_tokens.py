"""Metric tokens the template actually predicts, and a warning for a token the prompt does not predict (issue 27);
PatchingResult's repr and TransformerLens-shaped scores."""

from __future__ import annotations

import warnings

import pytest
import torch

from tv_lens import patching
from tv_lens import prompts as P
from tv_lens.errors import InputError
from tv_lens.tasks import TaskItem

DEMOS = [TaskItem("Japan", "Tokyo"), TaskItem("Peru", "Lima")]


def _pair(template="qa"):
    return (P.icl_prompt(DEMOS, TaskItem("France", "Paris"), template=template),
            P.icl_prompt(DEMOS, TaskItem("Spain", "Madrid"), template=template))


def test_answer_token_follows_the_template_spacing(smollm2):
    plain, spaced = patching.answer_token(smollm2, "Paris"), patching.answer_token(smollm2, "Paris", "qa_space")
    assert smollm2.tokenizer.decode([plain]) == "Paris"
    assert smollm2.tokenizer.decode([spaced]) == " Paris"
    assert patching.answer_token(smollm2, "Paris", "qa") == plain
    with pytest.raises(InputError):
        patching.answer_token(smollm2, "  ")


@pytest.mark.parametrize("template", ["qa", "qa_space"])
def test_answer_token_is_the_token_the_model_predicts_after_the_delimiter(smollm2, template):
    clean, _ = _pair(template)
    with torch.no_grad():
        probs = smollm2(P.encode(smollm2, clean))[0, -1].softmax(-1)
    right = patching.answer_token(smollm2, "Paris", template)
    other = patching.answer_token(smollm2, "Paris", "qa_space" if template == "qa" else "qa")
    assert probs[right] > 10 * probs[other]


def test_a_metric_token_the_clean_prompt_does_not_predict_warns(smollm2):
    clean, corrupted = _pair("qa")
    with pytest.warns(UserWarning, match="answer_token"):
        patching.activation_patching(smollm2, clean, corrupted, patching.probability(smollm2, " Paris"),
                                     layers=[20], positions=[-1], progress=False)
    with pytest.warns(UserWarning, match="probability"):
        patching.attribution_patching(smollm2, clean, corrupted, patching.probability(smollm2, " Paris"),
                                      layers=[20], positions=[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = patching.activation_patching(smollm2, clean, corrupted,
                                              patching.probability(smollm2, patching.answer_token(smollm2, "Paris")),
                                              layers=[20], positions=[-1], progress=False)
    assert result.clean_metric > 1e-3


def test_repr_names_the_attributes_and_score_grid_has_the_tl_shape(smollm2):
    clean, corrupted = _pair("qa")
    metric = patching.logit_diff(smollm2, patching.answer_token(smollm2, "Paris"),
                                 patching.answer_token(smollm2, "Madrid"))
    result = patching.activation_patching(smollm2, clean, corrupted, metric, layers=[10, 20], positions=[-1, -2],
                                          progress=False)
    text = repr(result)
    assert f"clean_metric={result.clean_metric:.4g}" in text and "corrupted_metric=" in text
    assert "'Paris'" in text
    assert result.score_grid.shape == (2, 2) and result.scores.shape == (2, 2, 1)
    torch.testing.assert_close(result.score_grid, result.scores[:, :, 0])
