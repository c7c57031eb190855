"""Activation patching and attribution patching: clean → corrupted grids in one call.

An experiment has a CLEAN prompt (where the behaviour happens), a CORRUPTED prompt (where it does not) and a metric
on the corrupted prompt's next-token logits. Each grid cell copies one activation of the clean run into the
corrupted run and measures the metric::

    import tv_lens as tvl
    from tv_lens import patching

    metric = patching.logit_diff(model, " Paris", " Madrid")
    result = patching.activation_patching(model, clean, corrupted, metric, hook="resid_pre")
    result.grid            # [n_layers, n_positions]: recovery, 0 = corrupted, 1 = clean
    result.to_frame()      # tidy pandas DataFrame, one row per cell
    tvl.plot.patching_grid(result)

Positions are aligned between the two prompts by NAME, so the prompts may differ in length and modality
(``positions=["delimiter"]`` patches the clean prompt's final ``A:`` into the corrupted prompt's final ``A:``, text
into image prompt; see :func:`activation_patching`).

Speed (exact numbers, not an approximation): cells whose clean activation equals the corrupted one bit for bit
(positions of a prefix both prompts share) are not re-run, their score is the corrupted metric (``result.computed``
marks the cells that ran); the corrupted prompt runs once with its KV cache; the other cells are sorted by
position and batched as rows, and each batch re-runs only the tokens from its earliest patched position on, on a
copy of that cached prefix (families whose positions depend on more than the cache length — Qwen2-VL, Fuyu — and
batches that patch inside an image re-run the whole prompt, still batched). :func:`attribution_patching` estimates
the whole grid from one forward per prompt and one backward pass (a first-order Taylor approximation).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import positions as _positions
from .adapters import resolve_path
from .errors import HookNameError, IncompatibleArgumentsError, InputError, PositionError
from .patching_pairs import PairsPatchingResult, best_cell, is_pair_list, over_pairs
from .progress import tqdm

HOOK_KINDS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
    "result": "blocks.{layer}.attn.hook_result",
    "pattern": "blocks.{layer}.attn.hook_pattern",
}
HEAD_KINDS = ("z", "result")


# ---------------------------------------------------------------------------------------------------- metrics
class Metric:
    """A metric on next-token logits: ``metric(logits [rows, d_vocab], clean_logits [d_vocab]) -> [rows]``.

    Metrics must be differentiable (attribution patching takes their gradient). Build them with
    :func:`logit_diff`, :func:`probability`, :func:`kl_divergence`, or wrap any ``logits -> [rows]`` function.
    """

    def __init__(self, fn: Callable[..., Tensor], name: str, needs_clean: bool = False,
                 expected: Sequence[tuple[int, str]] = ()) -> None:
        self.fn, self.name, self.needs_clean = fn, name, needs_clean
        #: ``(token id, "clean" | "corrupted")``: the tokens the metric expects each prompt to predict; a token
        #: with probability < :data:`LOW_PROBABILITY` there draws a warning (the wrong spelling of the answer?).
        self.expected = tuple(expected)

    def __call__(self, logits: Float[Tensor, "rows d_vocab"],
                 clean_logits: Float[Tensor, " d_vocab"] | None = None) -> Float[Tensor, " rows"]:
        try:
            out = self.fn(logits, clean_logits) if self.needs_clean else self.fn(logits)
        except IndexError as err:
            raise InputError(
                f"Metric {self.name!r} failed on logits of shape {tuple(logits.shape)}: {err}. A patching metric gets "
                "the LAST token's logits [rows, d_vocab] (one row per grid cell), not [batch, pos, d_vocab] as in "
                "TransformerLens' patching: write logits[:, a] - logits[:, b], not logits[0, -1, a] - ...") from err
        if not isinstance(out, Tensor) or out.shape != logits.shape[:1]:
            raise InputError(f"Metric {self.name!r} must return one value per row ([{logits.shape[0]}]); got "
                             f"{getattr(out, 'shape', type(out).__name__)}.")
        return out

    def __repr__(self) -> str:
        return f"Metric({self.name})"


def _as_metric(metric: Metric | Callable) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(metric, getattr(metric, "__name__", "metric"))
    raise InputError(f"metric must be a tv_lens.patching.Metric or a function logits -> [rows]; got {metric!r}.")


def token_id(model, token: int | str) -> int:
    """The id of ``token``: an int as is, a string by its FIRST token, spelled as given (``"Paris"`` and
    ``" Paris"`` are different tokens in BPE vocabularies; :func:`answer_token` gives the one the template makes).

    Raises:
        InputError: a string that tokenizes to nothing.
    """
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{token!r} tokenizes to nothing; pass a token id or a non-empty string.")
    return int(ids[0])


def answer_token(model, answer: str, template: Any = None) -> int:
    """The id of the answer's FIRST token as the template writes it after the delimiter — the token the model
    predicts next on a query in that template.

    ``"qa"`` (the default, ``A:{y}``) puts no space before the answer, so on SmolLM2 ``answer_token(model, "Paris")``
    is ``Paris``; ``"qa_space"`` (``A: {y}``) gives ``" Paris"``. Use it to build metrics::

        metric = patching.logit_diff(model, patching.answer_token(model, "Paris"),
                                     patching.answer_token(model, "Madrid"))

    Args:
        answer: the label, as in the task (``"Paris"``).
        template: a :class:`~tv_lens.prompts.Template` or its name (default ``"qa"``), the one the prompts use.

    Raises:
        InputError: an answer that tokenizes to nothing.
    """
    from .prompts import get_template

    tpl = get_template(template)
    if not isinstance(answer, str) or not answer.strip():
        raise InputError(f"answer must be a non-empty string (a task label); got {answer!r}.")
    prefix = f"{tpl.question}x{tpl.answer}"
    text = prefix + tpl.label_prefix + answer
    tokenizer = model.tokenizer
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None:
        for token, (start, end) in zip(encoded["input_ids"], offsets):
            if end > start and start >= len(prefix):
                return int(token)
    # slow tokenizers (no offsets), or a token that merges the delimiter with the answer: the answer on its own
    return token_id(model, tpl.label_prefix + answer)


#: A metric token whose probability on the prompt it should be predicted on is below this draws a warning.
LOW_PROBABILITY = 1e-3


def _token_label(model, token: int | str) -> str:
    if isinstance(token, str) or getattr(model, "tokenizer", None) is None:
        return repr(token)
    return repr(model.tokenizer.decode([token]))


def logit_diff(model, correct: int | str, wrong: int | str) -> Metric:
    """``logits[correct] - logits[wrong]`` at the corrupted prompt's last token (tokens: ids or strings).

    ``correct`` should be what the CLEAN prompt predicts and ``wrong`` what the corrupted one predicts; a patching
    call warns when either has probability < 1e-3 there (build them with :func:`answer_token`)."""
    a, b = token_id(model, correct), token_id(model, wrong)
    return Metric(lambda logits: logits[:, a] - logits[:, b],
                  f"logit_diff({_token_label(model, correct)}, {_token_label(model, wrong)})",
                  expected=((a, "clean"), (b, "corrupted")))


def probability(model, token: int | str) -> Metric:
    """Softmax probability of ``token`` at the last token (a patching call warns when the CLEAN prompt gives it
    probability < 1e-3: build it with :func:`answer_token`)."""
    t = token_id(model, token)
    return Metric(lambda logits: logits.float().softmax(-1)[:, t], f"probability({_token_label(model, token)})",
                  expected=((t, "clean"),))


def check_metric_tokens(model, metric: Metric, clean_logits: Float[Tensor, " d_vocab"],
                        corrupted_logits: Float[Tensor, " d_vocab"]) -> dict[int, float]:
    """Warn when a metric's token is unlikely where it should be predicted (probability < :data:`LOW_PROBABILITY`).

    Returns:
        ``{token id: probability}`` on the prompt each token is expected on.
    """
    probs = {"clean": clean_logits.float().softmax(-1), "corrupted": corrupted_logits.float().softmax(-1)}
    seen: dict[int, float] = {}
    for token, where in getattr(metric, "expected", ()):
        p = float(probs[where][token])
        seen[token] = p
        if p < LOW_PROBABILITY:
            top = int(probs[where].argmax())
            warnings.warn(
                f"Metric {metric.name}: token {_token_label(model, token)} has probability {p:.2g} on the {where} "
                f"prompt, which predicts {_token_label(model, top)} (p={float(probs[where][top]):.2g}). Is the "
                "answer spelled as the template writes it? patching.answer_token(model, label, template=...) gives "
                "that token.", stacklevel=3)
    return seen


def kl_divergence() -> Metric:
    """``KL(clean || patched)`` of the next-token distributions (0 = the clean prediction; lower is better, and the
    normalised recovery is still 0 = corrupted, 1 = clean)."""
    def kl(logits: Tensor, clean_logits: Tensor) -> Tensor:
        log_p = clean_logits.float().log_softmax(-1)
        log_q = logits.float().log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    return Metric(kl, "kl_divergence", needs_clean=True)


# ---------------------------------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class PositionPair:
    """One grid column: the clean positions copied into the corrupted positions (same count, in order)."""

    label: str
    clean: tuple[int, ...]
    corrupted: tuple[int, ...]


def _indices(spec: Any, positions: _positions.TokenPositions) -> tuple[int, ...]:
    index = _positions.resolve(spec, positions)[0]
    return tuple(int(i) for i in index.reshape(-1).tolist())


def align_positions(clean_positions: _positions.TokenPositions, corrupted_positions: _positions.TokenPositions,
                    spec: Any = None, clean_ids: Tensor | None = None, corrupted_ids: Tensor | None = None,
                    labels: Sequence[str] | None = None) -> list[PositionPair]:
    """Pair clean positions with corrupted positions.

    Args:
        spec: ``None`` / ``"all"``: every position (the prompts must have the same length); ``"aligned"``: the
            tokens of the longest shared prefix and shared suffix (equal token ids), position by position; or a
            list whose items are each one grid column: an int (same index in both, negative from each end), a
            name (``"delimiter"``, ``"delimiter[k]"``, ``"query"``, ``"query[-1]"``, ``"last"``, ``"image[j]"``;
            resolved in each prompt), or a pair ``(clean_spec, corrupted_spec)``. A span (``"query"``) is one
            column whose tokens are patched together; both sides must have as many tokens.
        labels: corrupted tokens, to label columns of ``"all"`` / ``"aligned"``.

    Raises:
        PositionError: prompts of different lengths with ``"all"``, spans of different sizes, names that do not
            occur.
    """
    n_clean, n_corrupted = clean_positions.seq_len, corrupted_positions.seq_len

    def label_of(i: int) -> str:
        return f"{i}: {labels[i]!r}" if labels is not None else str(i)

    if spec is None or (isinstance(spec, str) and spec == "all"):
        if n_clean != n_corrupted:
            raise PositionError(
                f"The clean prompt has {n_clean} tokens, the corrupted one {n_corrupted}: 'all' positions need equal "
                "lengths. Align by name (positions=['delimiter', 'query[-1]']), by pairs "
                "(positions=[('delimiter[-1]', 'delimiter')]) or positions='aligned' (shared prefix and suffix).")
        return [PositionPair(label_of(i), (i,), (i,)) for i in range(n_corrupted)]
    if isinstance(spec, str) and spec == "aligned":
        if clean_ids is None or corrupted_ids is None:
            raise InputError("positions='aligned' needs the token ids of both prompts.")
        a, b = clean_ids.reshape(-1).tolist(), corrupted_ids.reshape(-1).tolist()
        prefix = 0
        while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
            prefix += 1
        suffix = 0
        while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
            suffix += 1
        pairs = [PositionPair(label_of(i), (i,), (i,)) for i in range(prefix)]
        pairs += [PositionPair(label_of(len(b) - k), (len(a) - k,), (len(b) - k,)) for k in range(suffix, 0, -1)]
        if not pairs:
            raise PositionError("The prompts share no prefix or suffix tokens; name the positions to align.")
        return pairs
    items = [spec] if isinstance(spec, (str, int, tuple)) else list(spec)
    if not items:
        raise PositionError("positions=[] selects no grid column; give positions (e.g. [-1, 'delimiter']), None for "
                            "every position, or 'aligned'.")
    pairs = []
    for item in items:
        clean_spec, corrupted_spec = item if isinstance(item, tuple) else (item, item)
        clean_idx = _indices(clean_spec, clean_positions)
        corrupted_idx = _indices(corrupted_spec, corrupted_positions)
        if len(clean_idx) != len(corrupted_idx):
            raise PositionError(
                f"Position {item!r} covers {len(clean_idx)} clean token(s) but {len(corrupted_idx)} corrupted "
                "token(s) (e.g. a text query against an image query); patch one token of it ('query[-1]') or "
                "pair positions explicitly: (clean_spec, corrupted_spec).")
        label = str(item if not isinstance(item, tuple) else f"{clean_spec}→{corrupted_spec}")
        pairs.append(PositionPair(label, clean_idx, corrupted_idx))
    return pairs


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class PatchingResult:
    """A patching grid. ``scores`` and ``recovery`` are ``[n_layers, n_positions, n_heads]`` (``n_heads = 1`` for
    non-head hooks); :attr:`grid` drops the singleton axes.

    Attributes:
        scores: the metric with each cell patched (attribution: the first-order estimate of it).
        recovery: ``(score - corrupted_metric) / (clean_metric - corrupted_metric)``: 0 = corrupted, 1 = clean.
        layers, heads: the grid's layer indices and head indices (``heads`` is ``None`` for non-head hooks).
        positions: one :class:`PositionPair` per grid column.
        hook: the hook kind (``"resid_pre"``, ``"z"``...); method: ``"exact"`` or ``"attribution"``.
        clean_metric, corrupted_metric: the metric on the unpatched runs.
        corrupted_tokens, clean_tokens: the prompts' tokens as strings (plot labels).
        image_spans: ``(first, last)`` token index of each image of the corrupted prompt.
        computed: ``[n_layers, n_positions, n_heads]`` bool (exact grids): ``False`` where the clean activation
            equals the corrupted one bit for bit (e.g. a prefix both prompts share), so patching the cell writes
            back what is already there and its score IS the corrupted metric; no forward ran for it. ``None`` for
            attribution grids.
    """

    scores: Float[Tensor, "layer position head"]
    recovery: Float[Tensor, "layer position head"]
    layers: list[int]
    positions: list[PositionPair]
    heads: list[int] | None
    hook: str
    method: str
    metric: str
    clean_metric: float
    corrupted_metric: float
    corrupted_tokens: list[str] = field(default_factory=list)
    clean_tokens: list[str] = field(default_factory=list)
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    computed: Tensor | None = None

    @property
    def grid(self) -> Tensor:
        """Recovery as ``[layer, position]``, ``[layer, head]`` (one position column) or ``[layer, position, head]``."""
        return self._squeeze(self.recovery)

    @property
    def score_grid(self) -> Tensor:
        """The raw metric in :attr:`grid`'s shape: ``[layer, position]`` for a residual hook, as TransformerLens'
        ``get_act_patch_resid_pre`` returns it (``scores`` keeps the head axis: ``[layer, position, 1]``)."""
        return self._squeeze(self.scores)

    def _squeeze(self, values: Tensor) -> Tensor:
        if self.heads is None:
            return values[:, :, 0]
        return values[:, 0, :] if len(self.positions) == 1 else values

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per cell: layer, position label, corrupted/clean positions, head, score, recovery."""
        records = []
        for li, layer in enumerate(self.layers):
            for pi, pair in enumerate(self.positions):
                for hi, head in enumerate(self.heads if self.heads is not None else [None]):
                    records.append({
                        "layer": layer, "position": pair.label, "corrupted_position": pair.corrupted[0],
                        "clean_position": pair.clean[0], "n_tokens": len(pair.corrupted), "head": head,
                        "score": float(self.scores[li, pi, hi]), "recovery": float(self.recovery[li, pi, hi]),
                        "hook": self.hook, "method": self.method,
                        "computed": None if self.computed is None else bool(self.computed[li, pi, hi])})
        return records

    def to_frame(self):
        """A tidy ``pandas.DataFrame`` of :meth:`to_records`."""
        import pandas as pd

        return pd.DataFrame(self.to_records())

    def __repr__(self) -> str:
        heads = f" × {len(self.heads)} heads" if self.heads is not None else ""
        (li, pi, hi), where = best_cell(self)
        skipped = "" if self.computed is None or bool(self.computed.all()) else (
            f" ({int((~self.computed).sum())} no-op cells: clean = corrupted activation)")
        return (f"PatchingResult({self.method}, hook={self.hook}, {len(self.layers)} layers × "
                f"{len(self.positions)} positions{heads}{skipped}, metric={self.metric}, "
                f"clean_metric={self.clean_metric:.4g}, corrupted_metric={self.corrupted_metric:.4g}, "
                f"best recovery {float(self.recovery[li, pi, hi]):.3f} "
                f"at {where})")

    def _repr_html_(self) -> str:
        frame = self.to_frame().sort_values("recovery", ascending=False).head(10)
        return f"<p><code>{self.__repr__()}</code></p><p>Top cells:</p>" + frame.to_html(index=False)


# ---------------------------------------------------------------------------------------------------- running
@dataclass
class _Run:
    inputs: dict
    positions: _positions.TokenPositions
    ids: Tensor


def _prepare(model, prompt: Any) -> _Run:
    """One prompt → model inputs (batch of 1), its positions and token ids."""
    from .prompts import Prompt, encode

    if isinstance(prompt, Prompt):
        inputs = encode(model, prompt)
    elif isinstance(prompt, str):
        inputs = model.prepare(prompt)
    elif isinstance(prompt, dict) or hasattr(prompt, "keys"):
        inputs = prompt
    else:
        raise InputError(f"A patching prompt is a Prompt, a string or a processed input dict; got "
                         f"{type(prompt).__name__}. For many pairs pass two lists of prompts.")
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise InputError(f"Patching compares ONE clean and ONE corrupted prompt; got input_ids of shape "
                         f"{tuple(ids.shape)}. For many pairs pass two lists of prompts, clean[i] → corrupted[i] "
                         "(one grid per pair, their mean and a 95% CI).")
    return _Run(inputs, model.positions(inputs), ids)


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "offset_mapping"}


def _forward_params(model) -> frozenset[str]:
    return frozenset(inspect.signature(model.hf_model.forward).parameters)


def _keep_last(model) -> dict[str, int]:
    """Unembed only the last token (the metric reads nothing else), where the HF forward allows it."""
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}


def _hook_names(model, hook: str, layers: Sequence[int]) -> list[str]:
    kind = hook.removeprefix("hook_")
    if kind not in HOOK_KINDS:
        raise HookNameError(hook, {k: None for k in HOOK_KINDS})
    if kind == "pattern":
        raise IncompatibleArgumentsError(
            "Attention patterns can be read, not patched (the attention module has used them when the hook runs); "
            "patch each head's output instead: hook='z' (or 'result').")
    names = [HOOK_KINDS[kind].format(layer=layer) for layer in layers]
    for name in names:
        if name not in model.hook_dict:
            raise HookNameError(name, model.hook_dict)
    return names


def _capture(model, run: _Run, names: list[str], use_cache: bool = False,
             observe: Callable[[str, Tensor], None] | None = None) -> tuple[Tensor, dict[str, Tensor], Any]:
    """One forward; returns last-token logits ``[d_vocab]``, ``{name: activation [pos, ...]}`` and the KV cache.

    With ``observe``, each activation ``[pos, ...]`` is handed to ``observe(name, act)`` instead of being kept."""
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        if observe is None:
            store[hook.name] = act[0].detach()
        else:
            observe(hook.name, act[0].detach())

    with torch.no_grad(), model.hooks([(name, save) for name in names]):
        out = model.hf_model(**_model_inputs(run.inputs), use_cache=use_cache, **_keep_last(model))
    cache = None
    if use_cache:
        cache = out.get("cache") if isinstance(out, dict) and out.get("cache") is not None else out.past_key_values
    return out.logits[0, -1].detach(), store, cache


@dataclass
class _Grid:
    layers: list[int]
    names: list[str]
    pairs: list[PositionPair]
    heads: list[int] | None


def _setup(model, clean, corrupted, hook, layers, positions, heads) -> tuple[_Run, _Run, _Grid, str]:
    clean_run, corrupted_run = _prepare(model, clean), _prepare(model, corrupted)
    kind = hook.removeprefix("hook_")
    layers = list(range(model.cfg.n_layers)) if layers is None or layers == "all" else [
        model.layer_index(layer) for layer in ([layers] if isinstance(layers, int) else layers)]
    if not layers:
        raise InputError("layers selects no layer.")
    names = _hook_names(model, kind, layers)
    if kind in HEAD_KINDS:
        n_heads = model.cfg.n_heads
        heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad or not heads:
            raise InputError(f"heads={heads!r}: this model has heads 0..{n_heads - 1}.")
    elif heads is not None:
        raise IncompatibleArgumentsError(f"heads= needs a per-head hook (hook='z' or 'result'), not {hook!r}.")
    tokens = model.to_str_tokens(corrupted_run.ids[0]) if model.tokenizer is not None else None
    pairs = align_positions(clean_run.positions, corrupted_run.positions, positions, clean_run.ids,
                            corrupted_run.ids, labels=tokens)
    return clean_run, corrupted_run, _Grid(layers, names, pairs, heads), kind


def _result(model, grid: _Grid, scores: Tensor, clean_metric: float, corrupted_metric: float, kind: str,
            method: str, metric: Metric, clean_run: _Run, corrupted_run: _Run,
            computed: Tensor | None = None) -> PatchingResult:
    denominator = clean_metric - corrupted_metric
    if denominator == 0:
        warnings.warn("The metric is the same on the clean and the corrupted prompt, so recovery is undefined "
                      "(NaN); read result.scores, or pick prompts/tokens that the model tells apart.", stacklevel=3)
        recovery = torch.full_like(scores, float("nan"))
    else:
        recovery = (scores - corrupted_metric) / denominator
    spans = [(int(s[0]), int(s[-1])) for s in corrupted_run.positions.images[0] if s.numel()] \
        if model.cfg.is_multimodal else []
    tokenize = model.tokenizer is not None
    return PatchingResult(
        scores=scores, recovery=recovery, layers=grid.layers, positions=grid.pairs, heads=grid.heads, hook=kind,
        method=method, metric=metric.name, clean_metric=clean_metric, corrupted_metric=corrupted_metric,
        corrupted_tokens=model.to_str_tokens(corrupted_run.ids[0]) if tokenize else [],
        clean_tokens=model.to_str_tokens(clean_run.ids[0]) if tokenize else [], image_spans=spans, computed=computed)


class _RowPatch:
    """A hook that writes clean values into given (row, position[, head]) cells of a batch; counts its calls."""

    def __init__(self, rows: Tensor, index: Tensor, head: Tensor | None, values: Tensor) -> None:
        self.rows, self.index, self.head, self.values = rows, index, head, values
        self.fired = 0

    def __call__(self, act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        target = (self.rows, self.index) if self.head is None else (self.rows, self.index, self.head)
        act[target] = self.values.to(act.dtype)
        self.fired += 1
        return act


def _chunks(cells: list[tuple[int, int, int]], start_of: Callable[[int], int], seq_len: int, max_rows: int,
            max_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Cells sorted by layer, then by earliest patched position (latest first), cut into chunks of at most
    ``max_rows`` rows and ``max_tokens`` re-run tokens (rows × suffix length). A chunk then shares one first layer
    and one prefix, the two things a batched forward can skip."""
    ordered = sorted(cells, key=lambda c: (-c[0], -start_of(c[1])))
    chunks: list[list] = []
    current: list = []
    first = seq_len
    for cell in ordered:
        start = min(first, start_of(cell[1]))
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * (seq_len - start) > max_tokens):
            chunks.append(current)
            current, start = [], start_of(cell[1])
        current.append(cell)
        first = start
    if current:
        chunks.append(current)
    return chunks


def _croppable(cache: Any, seq_len: int) -> bool:
    """Whether the cache still holds every position (a sliding-window layer past its window keeps only the last
    ``window - 1``, so it cannot be cut back to a shorter prefix)."""
    windows = [getattr(layer, "sliding_window", None) for layer in getattr(cache, "layers", [])]
    return hasattr(cache, "crop") and all(w is None or seq_len < w for w in windows)


def activation_patching(model, clean: Any, corrupted: Any, metric: Metric | Callable, *, hook: str = "resid_pre",
                        layers: Sequence[int] | str | None = None, positions: Any = None,
                        heads: Sequence[int] | None = None, max_rows: int = 64, max_tokens: int = 2048,
                        skip_identical: bool = True, progress: bool = True) -> PatchingResult:
    """Exact activation patching: copy each clean activation into the corrupted run, one grid cell at a time.

    Args:
        model: a :class:`~tv_lens.HookedMultimodalModel`.
        clean, corrupted: one prompt each: a :class:`~tv_lens.prompts.Prompt` (named positions such as
            ``"delimiter"`` work), a string, or a processed input dict of batch 1. They may differ in length and
            modality when ``positions`` aligns them.
        metric: on the corrupted prompt's last-token logits ``[rows, d_vocab] -> [rows]``: :func:`logit_diff`,
            :func:`probability`, :func:`kl_divergence` or your own function.
        hook: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"`` (``[batch, pos,
            d_model]``), or per head ``"z"`` (``[batch, pos, head, d_head]``), ``"result"`` (``[batch, pos, head,
            d_model]``).
        layers: layer indices (default: all).
        positions: grid columns, see :func:`align_positions`: ``None`` (every position; equal lengths),
            ``"aligned"`` (shared prefix/suffix), or a list of ints, names and ``(clean, corrupted)`` pairs.
        heads: for ``"z"`` / ``"result"``: the heads (default: all); the grid is then layer × position × head.
        max_rows, max_tokens: memory bound of one batched forward: at most ``max_rows`` cells and ``max_rows ×
            re-run tokens <= max_tokens`` (a chunk's KV cache copy is ``rows × prompt_len`` per layer).
        skip_identical: do not re-run cells whose clean activation equals the corrupted one bit for bit (typically
            every position of a prefix the two prompts share): writing a value back over itself changes nothing,
            so their score is the corrupted metric exactly. ``result.computed`` marks the cells that ran;
            ``False`` re-runs every cell (same numbers, slower).
        progress: show a tqdm bar over the batched forwards.

    Returns:
        :class:`PatchingResult` with ``scores`` / ``recovery`` ``[n_layers, n_positions, n_heads]``; for lists of
        prompts a :class:`~tv_lens.patching_pairs.PairsPatchingResult` (per-pair grids, mean, 95% CI per cell).

    Many pairs: pass ``clean`` and ``corrupted`` as two lists of the same length (pair ``i`` = ``clean[i]`` →
    ``corrupted[i]``, any mix of modalities) and ``metric`` as one metric or a list with one per pair; columns are
    named positions (``positions=["delimiter", "query[-1]"]``), matched across pairs by name.

    Raises:
        PositionError: prompts that cannot be aligned as asked. HookNameError: a hook the family lacks.
        IncompatibleArgumentsError: ``hook="pattern"`` (read-only; patch ``"z"``), ``heads=`` with a non-head hook.
    """
    if is_pair_list(clean, corrupted):
        return over_pairs(activation_patching, model, clean, corrupted, metric, progress, hook=hook, layers=layers,
                          positions=positions, heads=heads, max_rows=max_rows, max_tokens=max_tokens,
                          skip_identical=skip_identical, progress=False)
    metric = _as_metric(metric)
    for name, value in (("max_rows", max_rows), ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int (a bound on one batched forward); got {value!r}.")
    if not isinstance(skip_identical, bool):
        raise InputError(f"skip_identical must be True or False; got {skip_identical!r}.")
    clean_run, corrupted_run, grid, kind = _setup(model, clean, corrupted, hook, layers, positions, heads)
    clean_logits, clean_acts, _ = _capture(model, clean_run, grid.names)
    n_heads = len(grid.heads) if grid.heads is not None else 1
    layer_of = {name: li for li, name in enumerate(grid.names)}
    computed = torch.ones(len(grid.layers), len(grid.pairs), n_heads, dtype=torch.bool)

    def find_no_ops(name: str, corrupted_act: Tensor) -> None:
        """Mark the cells whose clean value(s) equal the corrupted value(s) they would overwrite, bit for bit (read
        during the corrupted forward, so no corrupted activation is kept)."""
        li, clean_act = layer_of[name], clean_acts[name]
        for pi, pair in enumerate(grid.pairs):
            clean_value, corrupted_value = clean_act[list(pair.clean)], corrupted_act[list(pair.corrupted)]
            for hi in range(n_heads):
                if grid.heads is None:
                    same = torch.equal(clean_value, corrupted_value)
                else:
                    same = torch.equal(clean_value[:, grid.heads[hi]], corrupted_value[:, grid.heads[hi]])
                computed[li, pi, hi] = not same

    corrupted_logits, _, kv_cache = _capture(model, corrupted_run, grid.names if skip_identical else [],
                                             use_cache=model.adapter.prefix_reuse, observe=find_no_ops)
    if kv_cache is not None and not _croppable(kv_cache, corrupted_run.ids.shape[1]):
        kv_cache = None
    with torch.no_grad():
        clean_metric = float(metric(clean_logits[None], clean_logits)[0])
        corrupted_metric = float(metric(corrupted_logits[None], clean_logits)[0])
    check_metric_tokens(model, metric, clean_logits, corrupted_logits)

    cells = [(li, pi, hi) for li in range(len(grid.layers)) for pi in range(len(grid.pairs))
             for hi in range(n_heads) if computed[li, pi, hi]]
    seq_len = corrupted_run.ids.shape[1]
    image_end = max((int(s.max()) for s in corrupted_run.positions.images[0] if s.numel()), default=-1) \
        if model.cfg.is_multimodal else -1
    params = _forward_params(model)
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    keep_last = _keep_last(model)
    decoder_layers = resolve_path(model.hf_model, model.adapter.layers)
    if kv_cache is not None and not hasattr(kv_cache, "layers"):
        kv_cache = None   # a cache without per-layer entries cannot hold one row early and many rows late

    def start_of(pi: int) -> int:
        start = min(grid.pairs[pi].corrupted)
        # Re-running from inside an image (or where the cache length alone does not give positions) needs the
        # whole prompt.
        return 0 if kv_cache is None or start <= image_end else start

    scores = torch.full((len(grid.layers), len(grid.pairs), n_heads), corrupted_metric)
    chunks = _chunks(cells, start_of, seq_len, max_rows, max_tokens)
    for chunk in tqdm(chunks, desc=f"patching {kind}", disable=not progress, leave=False):
        start = min(start_of(pi) for _, pi, _ in chunk)
        by_layer: dict[int, list[tuple[int, int, int]]] = {}
        for row, (li, pi, hi) in enumerate(chunk):
            by_layer.setdefault(li, []).append((row, pi, hi))
        hooks, patches = [], []
        for li, members in by_layer.items():
            rows, index, head, values = [], [], [], []
            clean_act = clean_acts[grid.names[li]]
            for row, pi, hi in members:
                pair = grid.pairs[pi]
                for c, p in zip(pair.clean, pair.corrupted):
                    rows.append(row)
                    index.append(p - start)
                    if grid.heads is not None:
                        head.append(grid.heads[hi])
                        values.append(clean_act[c, grid.heads[hi]])
                    else:
                        values.append(clean_act[c])
            patch = _RowPatch(torch.tensor(rows), torch.tensor(index), torch.tensor(head) if head else None,
                              torch.stack(values))
            patches.append(patch)
            hooks.append((grid.names[li], patch))
        n_rows = len(chunk)
        # Layers before the chunk's first patched layer see the unpatched prompt: they run on ONE row, which a
        # pre-hook on the first patched layer repeats into one row per cell.
        first_layer = grid.layers[min(li for li, _, _ in chunk)]
        if start > 0:
            cache = copy.deepcopy(kv_cache)
            cache.crop(-(seq_len - start))
            for index, cache_layer in enumerate(cache.layers):
                if index >= first_layer:
                    cache_layer.batch_repeat_interleave(n_rows)
            step = {"input_ids": corrupted_run.ids[:, start:]}
            mask = corrupted_run.inputs.get("attention_mask")
            step["attention_mask"] = mask if mask is not None else torch.ones_like(corrupted_run.ids)
            for key, value in corrupted_run.inputs.items():   # other per-token inputs (token types) follow the ids
                if key not in step and key != "offset_mapping" and isinstance(value, Tensor) and value.ndim == 2 \
                        and value.shape == corrupted_run.ids.shape:
                    step[key] = value[:, start:]
            step[cache_kwarg] = cache
            step["use_cache"] = True
        else:
            step = {**_model_inputs(corrupted_run.inputs), "use_cache": False}

        def widen(module, args, kwargs, n_rows=n_rows):
            hidden = args[0] if args else kwargs["hidden_states"]
            wide = hidden.expand(n_rows, *hidden.shape[1:]).contiguous()
            return ((wide, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": wide})

        handle = decoder_layers[first_layer].register_forward_pre_hook(widen, with_kwargs=True, prepend=True)
        try:
            with torch.no_grad(), model.hooks(hooks):
                logits = model.hf_model(**step, **keep_last).logits[:, -1]
        finally:
            handle.remove()
        silent = [name for (name, _), patch in zip(hooks, patches) if patch.fired != 1]
        if silent:
            from .errors import PatchNotFiredError

            raise PatchNotFiredError(f"Patching hooks at {silent[:3]} ran {[p.fired for p in patches][:3]} times "
                                     "instead of once; their hook point did not run in this forward.")
        with torch.no_grad():
            values = metric(logits, clean_logits).float().cpu()
        for row, (li, pi, hi) in enumerate(chunk):
            scores[li, pi, hi] = values[row]
    return _result(model, grid, scores, clean_metric, corrupted_metric, kind, "exact", metric, clean_run,
                   corrupted_run, computed=computed)


def attribution_patching(model, clean: Any, corrupted: Any, metric: Metric | Callable, *, hook: str = "resid_pre",
                         layers: Sequence[int] | str | None = None, positions: Any = None,
                         heads: Sequence[int] | None = None) -> PatchingResult:
    """Attribution patching: estimate the whole :func:`activation_patching` grid from gradients.

    One forward on the clean prompt, one forward and ONE backward on the corrupted prompt: each cell's score is
    ``corrupted_metric + (clean_act - corrupted_act) · d metric / d act`` summed over the cell's positions (and
    restricted to its head): the first-order Taylor estimate of patching that cell. Good where the effect is
    roughly linear (small changes, late layers); check large effects with the exact grid.

    Arguments, result and errors are those of :func:`activation_patching` (``method="attribution"``), lists of
    pairs included.
    """
    if is_pair_list(clean, corrupted):
        return over_pairs(attribution_patching, model, clean, corrupted, metric, False, hook=hook, layers=layers,
                          positions=positions, heads=heads)
    metric = _as_metric(metric)
    clean_run, corrupted_run, grid, kind = _setup(model, clean, corrupted, hook, layers, positions, heads)
    clean_logits, clean_acts, _ = _capture(model, clean_run, grid.names)
    corrupted_acts: dict[str, Tensor] = {}
    zeros: dict[str, Tensor] = {}

    def watch(act: Tensor, hook: Any) -> Tensor:
        # A zero leaf added to the activation: d metric / d leaf = d metric / d activation along every later path,
        # whether or not the model's own weights require gradients.
        leaf = torch.zeros_like(act, requires_grad=True)
        zeros[hook.name] = leaf
        corrupted_acts[hook.name] = act[0].detach()
        return act + leaf

    with torch.enable_grad(), model.hooks([(name, watch) for name in grid.names]):
        logits = model.hf_model(**_model_inputs(corrupted_run.inputs), use_cache=False,
                                **_keep_last(model)).logits[:, -1]
        value = metric(logits, clean_logits)
        missing = [name for name in grid.names if name not in zeros]
        if missing:
            raise IncompatibleArgumentsError(f"{missing[:3]} did not run on the corrupted prompt.")
        grads = torch.autograd.grad(value.sum(), [zeros[name] for name in grid.names], allow_unused=True)
    corrupted_metric = float(value.detach()[0])
    check_metric_tokens(model, metric, clean_logits, logits.detach()[0])
    with torch.no_grad():
        clean_metric = float(metric(clean_logits[None], clean_logits)[0])
    n_heads = len(grid.heads) if grid.heads is not None else 1
    scores = torch.full((len(grid.layers), len(grid.pairs), n_heads), corrupted_metric)
    for li, name in enumerate(grid.names):
        grad = grads[li]
        if grad is None:   # the activation does not reach the metric: patching it changes nothing
            continue
        grad = grad[0].float()
        difference = clean_acts[name].float()
        corrupted_act = corrupted_acts[name].float()
        for pi, pair in enumerate(grid.pairs):
            delta = difference[list(pair.clean)] - corrupted_act[list(pair.corrupted)]
            # [k, d] or [k, head, d] -> per head
            effect = (delta * grad[list(pair.corrupted)]).sum(-1).sum(0)
            if grid.heads is None:
                scores[li, pi, 0] += float(effect)
            else:
                scores[li, pi] += effect[grid.heads].cpu()
    return _result(model, grid, scores, clean_metric, corrupted_metric, kind, "attribution", metric, clean_run,
                   corrupted_run)


__all__ = ["HOOK_KINDS", "LOW_PROBABILITY", "Metric", "PairsPatchingResult", "PatchingResult", "PositionPair",
           "activation_patching", "align_positions", "answer_token", "attribution_patching", "check_metric_tokens",
           "kl_divergence", "logit_diff", "probability", "token_id"]
