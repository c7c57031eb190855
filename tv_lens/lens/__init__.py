"""Logit lens: read residual-stream vectors in the vocabulary, through the model's own final norm and unembedding.

Anything of width ``d_model`` can be decoded: a cache entry (``[batch, d_model]`` at one position, or
``[batch, pos, d_model]``), a stack over layers, or a :class:`~tv_lens.vectors.TaskVector` (``[n_layers, d_model]``).
Only the cached positions are decoded; no full sequence is needed.

Two one-call experiments sit on top:

- :func:`lens_over_layers`: one forward, ``hook_resid_post`` of every layer at one (or a few) positions, decoded →
  :class:`LayerLens` (top-k, entropy, probability and rank of each prompt's answer, per layer).
- :func:`phase_curves`: the paper's Figure 3 — per layer, the probability mass on an *input*, a *task* and an
  *answer* token set, mean and spread over prompts → :class:`PhaseCurves`. :func:`top1_distribution` gives
  Figure 4's pies, :func:`decode_vector` Table 2's top-k decodings of a task vector.

Token sets (:func:`token_set`: which token ids a readout sums, how strings map to first tokens, the warnings and
errors) are described in :mod:`tv_lens.lens.tokens`.
"""

# In the order the names had in the single module lens.py: the API page lists them in this order.
from ..stats import t_quantile_975
from .tokens import TokenSetWarning
from .decode import OUTPUTS  # noqa: F401  (the old module's constant; not in __all__)
from .decode import logit_lens, TopK, top_k, token_probability, entropy, token_rank
from .tokens import TokenSet, first_token, token_set, PerPrompt, LABEL, token_mask
from .phases import default_token_sets, input_token_set
from .layers import LayerLens, lens_over_layers
from .phases import find_peak, summarize, PhaseCurves, phase_curves, top1_distribution
from .decode import decode_vector

__all__ = ["LABEL", "LayerLens", "PerPrompt", "PhaseCurves", "TokenSet", "TokenSetWarning", "TopK",
           "decode_vector", "default_token_sets", "entropy", "find_peak", "first_token", "input_token_set",
           "lens_over_layers",
           "logit_lens", "phase_curves", "summarize", "t_quantile_975", "token_mask", "token_probability",
           "token_rank", "token_set", "top1_distribution", "top_k"]
