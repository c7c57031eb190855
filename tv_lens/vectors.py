"""Task vectors: extraction (exemplar and instruction), ensembles, LLM→VLM transfer, safe files.

A task vector is the residual stream (``blocks.{l}.hook_resid_post``) at a delimiter token, averaged over prompts;
tv_lens keeps one for every requested layer, and the layer to patch is chosen later (``evaluate.layer_sweep``).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import LayerOutOfRangeError, OutputPathError, TaskError, VectorError
from .progress import tqdm
from .prompts import Prompt, encode, instruction

FORMAT = "tv_lens.task_vector/2"
"""Version 2: the checksum covers the metadata too (version 1 covered the tensors only)."""
SUFFIX = ".safetensors"
_META_KEYS = ("layers", "model_name", "family", "d_model", "n_model_layers", "kind", "modality", "position",
              "n_prompts", "seed", "task", "extra")


@dataclass
class TaskVector:
    """Mean residual-stream vectors, one per layer, with where they came from.

    Attributes:
        vectors: ``[n_layers_kept, d_model]`` float32 on CPU, row ``i`` for ``layers[i]``.
        layers: the model layers the rows belong to.
        model_name, family, d_model, n_model_layers: the source model.
        kind: ``"icl"``, ``"instruction"``, ``"ensemble"`` or ``"custom"``.
        modality: of the demos (``"text"`` / ``"image"``), ``None`` for instructions.
        position: where it was read (``"delimiter[-1]"``...).
        n_prompts, seed, task: provenance.
        per_prompt: optionally ``[n_prompts, n_layers_kept, d_model]``, each prompt's own vector.
    """

    vectors: Float[Tensor, "layer d_model"]
    layers: list[int]
    model_name: str
    family: str
    d_model: int
    n_model_layers: int
    kind: str = "icl"
    modality: str | None = "text"
    position: str = "delimiter[-1]"
    n_prompts: int = 0
    seed: int | None = None
    task: str | None = None
    per_prompt: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.n_model_layers, int) or isinstance(self.n_model_layers, bool) \
                or self.n_model_layers < 1:
            raise VectorError(f"n_model_layers must be a positive int, got {self.n_model_layers!r}.")
        layers = list(self.layers)
        bad = [layer for layer in layers if not isinstance(layer, int) or isinstance(layer, bool)
               or not 0 <= layer < self.n_model_layers]
        if bad:
            raise VectorError(f"layers {bad[:5]} are not in [0, n_model_layers={self.n_model_layers}).")
        if len(set(layers)) != len(layers):
            raise VectorError(f"layers {_short(layers)} name a layer twice.")
        self.layers = layers
        if self.vectors.ndim != 2 or self.vectors.shape != (len(self.layers), self.d_model):
            raise VectorError(f"vectors must be [len(layers)={len(self.layers)}, d_model={self.d_model}], got "
                              f"{tuple(self.vectors.shape)}.")

    def __getitem__(self, layer: int) -> Float[Tensor, " d_model"]:
        """The vector of model layer ``layer`` (negative counts from the model's last layer)."""
        return self.vectors[self._row(layer)]

    def _row(self, layer: int) -> int:
        if not isinstance(layer, int):
            raise LayerOutOfRangeError(f"Layer must be an int, got {layer!r}.")
        if not -self.n_model_layers <= layer < self.n_model_layers:
            raise LayerOutOfRangeError(f"Layer {layer} is out of range: the source model has {self.n_model_layers} "
                                       f"layers (0..{self.n_model_layers - 1}).")
        if layer < 0:
            layer += self.n_model_layers
        if layer not in self.layers:
            raise LayerOutOfRangeError(f"Layer {layer} is not in this task vector (it has layers "
                                       f"{_short(self.layers)}); extract with layers='all' or include it.")
        return self.layers.index(layer)

    def hooks(self, layers: int | Sequence[int], at: Any = "delimiter", mode: str = "replace",
              scale: float = 1.0) -> list[tuple[str, Any]]:
        """``fwd_hooks`` that patch (``mode="replace"``) or add this vector at ``at`` in each of ``layers``."""
        from .hooks import add, patch

        layers = [layers] if isinstance(layers, int) else list(layers)
        if mode not in ("replace", "add"):
            raise ValueError(f"mode must be 'replace' or 'add', not {mode!r}.")
        out = []
        for layer in layers:
            row = self._row(layer)   # range-checked: never wraps
            vec = self.vectors[row]
            hook = patch(vec, at=at) if mode == "replace" else add(vec, at=at, scale=scale)
            out.append((f"blocks.{self.layers[row]}.hook_resid_post", hook))
        return out

    def check_compatible(self, model) -> None:
        """Raise :class:`VectorError` unless ``model`` has this vector's hidden size and enough layers."""
        if model.cfg.d_model != self.d_model:
            raise VectorError(f"This task vector has d_model={self.d_model} (from {self.model_name}); the model "
                              f"{model.cfg.model_name} has d_model={model.cfg.d_model}.")
        if max(self.layers) >= model.cfg.n_layers:
            raise VectorError(f"This task vector has layer {max(self.layers)}; the model has only "
                              f"{model.cfg.n_layers} layers.")

    def subsample(self, r: int, seed: int = 0) -> TaskVector:
        """Mean of ``r`` random per-prompt vectors (Figure 8's sample-efficiency curve)."""
        if self.per_prompt is None:
            raise VectorError("This vector kept no per-prompt vectors; extract with keep_per_prompt=True.")
        n = self.per_prompt.shape[0]
        if not 1 <= r <= n:
            raise VectorError(f"r must be in [1, {n}], got {r}.")
        picked = random.Random(seed).sample(range(n), r)
        return replace(self, vectors=self.per_prompt[picked].mean(0), n_prompts=r, per_prompt=None,
                       extra={**self.extra, "subsample_seed": seed})

    # ------------------------------------------------------------------ files
    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_name": self.model_name, "family": self.family, "d_model": self.d_model,
                "n_model_layers": self.n_model_layers, "layers": self.layers, "kind": self.kind,
                "modality": self.modality, "position": self.position, "n_prompts": self.n_prompts,
                "seed": self.seed, "task": self.task, "extra": self.extra}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors, metadata in its header) atomically (:mod:`tv_lens.io`).

        The name is kept as given; ``.safetensors`` is APPENDED when the name does not end with it, so
        ``save("cc.icl.text")`` writes ``cc.icl.text.safetensors`` and never replaces another suffix. A folder
        raises :class:`~tv_lens.errors.OutputPathError`, and so does a folder that cannot be written (read-only,
        missing and not creatable). Returns the path written.
        """
        from safetensors.torch import save_file

        from .io import atomic_save

        path = vector_path(path)
        tensors = {"vectors": self.vectors.contiguous().float().cpu()}
        if self.per_prompt is not None:
            tensors["per_prompt"] = self.per_prompt.contiguous().float().cpu()
        meta = json.loads(json.dumps(self.metadata()))   # as it will read back
        meta["sha256"] = _digest(tensors, meta)
        try:
            return atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata={"tv_lens": json.dumps(meta)}))
        except OutputPathError:
            raise
        except Exception as err:   # noqa: BLE001 - OSError, or safetensors' own error for an unwritable folder
            raise OutputPathError(f"Cannot write the task vector to {path} ({_one_line(err)}); save it into a "
                                  "folder you can write to.") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Read a file written by :meth:`save`; validates format, metadata, shapes and checksum. Never unpickles.

        Raises:
            FileNotFoundError: no file. VectorError: not a task-vector file, an old format, a checksum that does
            not match (tensors AND metadata are covered), or metadata that contradicts the tensors.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No task-vector file at {path}.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises several types for garbage input
            raise VectorError(f"{path} is not a safetensors task-vector file ({_one_line(err)}).") from None
        try:
            meta = json.loads(header["tv_lens"])
        except (KeyError, json.JSONDecodeError, RecursionError):
            raise VectorError(f"{path} has no tv_lens metadata: not a task-vector file.") from None
        if not isinstance(meta, dict):
            raise VectorError(f"{path}: its tv_lens metadata is not an object.")
        if meta.get("format") != FORMAT:
            hint = " (written by an older tv_lens: extract it again)" if meta.get("format") == \
                "tv_lens.task_vector/1" else ""
            raise VectorError(f"{path} has format {meta.get('format')!r}; expected {FORMAT!r}{hint}.")
        if "vectors" not in tensors or set(tensors) - {"vectors", "per_prompt"}:
            raise VectorError(f"{path} must hold a 'vectors' tensor (and optionally 'per_prompt'); it holds "
                              f"{sorted(tensors)}.")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise VectorError(f"{path}: metadata lacks {missing}.")
        if meta.get("sha256") != _digest(tensors, meta):
            raise VectorError(f"{path} is corrupted or was edited: its checksum does not match its tensors and "
                              "metadata.")
        try:
            vector = cls(vectors=tensors["vectors"], per_prompt=tensors.get("per_prompt"),
                         **{k: meta[k] for k in _META_KEYS})
        except (TypeError, ValueError) as err:
            raise VectorError(f"{path}: {_one_line(err)}") from None
        if vector.per_prompt is not None and vector.per_prompt.shape[1:] != vector.vectors.shape:
            raise VectorError(f"{path}: per_prompt has shape {tuple(vector.per_prompt.shape)}, not "
                              f"[n, {len(vector.layers)}, {vector.d_model}].")
        return vector

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        return (f"TaskVector({self.kind}, task={self.task!r}, modality={self.modality}, model={self.model_name!r}"
                f" ({self.family}), layers={_short(self.layers)}, d_model={self.d_model}, "
                f"n_prompts={self.n_prompts}, position={self.position!r}, seed={self.seed})")

    def _repr_html_(self) -> str:
        norms = self.vectors.norm(dim=-1)
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in [("kind", self.kind), ("task", self.task), ("modality", self.modality),
                                    ("model", f"{self.model_name} ({self.family})"),
                                    ("layers", _short(self.layers)), ("d_model", self.d_model),
                                    ("prompts", self.n_prompts), ("position", self.position),
                                    ("seed", self.seed), ("norm range", f"{norms.min():.2f} – {norms.max():.2f}")])
        return f"<b>TaskVector</b><table>{rows}</table>"


def _short(layers: Sequence[int]) -> str:
    layers = list(layers)
    if len(layers) > 3 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return str(layers)


def _digest(tensors: dict[str, Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 over every tensor (name, shape, bytes) and the metadata (canonical JSON, ``sha256`` left out)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].contiguous().float().cpu()
        h.update(key.encode())
        h.update(json.dumps(list(tensor.shape)).encode())
        h.update(tensor.numpy().tobytes())
    body = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode())
    return h.hexdigest()


def vector_path(path: str | os.PathLike) -> Path:
    """Where :meth:`TaskVector.save` writes ``path``: the name as given, ``.safetensors`` appended if missing."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        from .errors import OutputPathError

        raise OutputPathError(f"{path} is a folder; give a file name (e.g. {path / ('vector' + SUFFIX)}).")
    return path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX)


def _one_line(err: Any) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _layers(model, layers: str | int | Sequence[int]) -> list[int]:
    if isinstance(layers, str):
        if layers != "all":
            raise LayerOutOfRangeError(f"layers must be 'all', an int or a list of ints, not {layers!r}.")
        return list(range(model.cfg.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise LayerOutOfRangeError("No layers requested.")
    return sorted({model.layer_index(layer) for layer in layers})


@torch.no_grad()
def extract_task_vector(model, prompts: Sequence[Prompt], layers: str | int | Sequence[int] = "all",
                        position: Any = "delimiter[-1]", batch_size: int = 8, keep_per_prompt: bool = False,
                        task: str | None = None, seed: int | None = None, kind: str | None = None,
                        progress: bool = True) -> TaskVector:
    """Mean ``hook_resid_post`` at ``position`` over ``prompts``, for every layer in ``layers``.

    The forward pass stops after the deepest requested layer, and only the one position is kept.

    Args:
        model: a ``HookedMultimodalModel``.
        prompts: e.g. ``tvl.prompts.icl(task.val, n_shots=5, modality="text")``.
        layers: ``"all"``, a layer, or a list.
        position: where to read. Default ``"delimiter[-1]"``: the LAST DEMO's ``A:`` delimiter, which is what the
            paper's released code reads (``src_match=-3``), so the query cannot leak into the vector.
            ``"query_delimiter"`` (alias ``"delimiter"``) is the query's own ``A:``, which the paper does NOT use.
        batch_size: prompts per forward.
        keep_per_prompt: also keep each prompt's vector (``[n_prompts, n_layers, d_model]``) for
            :meth:`TaskVector.subsample`.

    Returns:
        A :class:`TaskVector`.
    """
    prompts = list(prompts)
    if not prompts:
        raise TaskError("No prompts to extract a task vector from.")
    layer_list = _layers(model, layers)
    names = [f"blocks.{layer}.hook_resid_post" for layer in layer_list]
    total = torch.zeros(len(layer_list), model.cfg.d_model, dtype=torch.float64)
    per_prompt = [] if keep_per_prompt else None
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="extract", disable=not progress or len(batches) < 2, leave=False):
        batch = encode(model, prompts[start:start + batch_size])
        _, cache = model.run_with_cache(batch, names_filter=names, positions=position,
                                        stop_at_layer=layer_list[-1] + 1)
        stacked = torch.stack([cache[name] for name in names], dim=1).float().cpu()  # [batch, layer, k, d]
        if stacked.shape[2] != 1:
            raise VectorError(f"Position {position!r} selects several tokens per prompt; a task vector needs one.")
        stacked = stacked[:, :, 0]
        total += stacked.double().sum(0)
        if per_prompt is not None:
            per_prompt.append(stacked)
    first = prompts[0]
    return TaskVector(
        vectors=(total / len(prompts)).float(), layers=layer_list, model_name=model.cfg.model_name,
        family=model.cfg.family, d_model=model.cfg.d_model, n_model_layers=model.cfg.n_layers,
        kind=kind or ("instruction" if first.kind == "instruction" else "icl"), modality=first.demo_modality,
        position=str(position), n_prompts=len(prompts), seed=seed, task=task,
        per_prompt=torch.cat(per_prompt) if per_prompt else None,
        extra={"n_shots": first.n_demos} if first.kind == "icl" else {})


def icl_vector(model, items: Any, seed: int = 0, n_shots: int = 5, modality: str = "text",
               pool: Sequence | None = None, split: str = "val", layers: str | int | Sequence[int] = "all",
               position: Any = "delimiter[-1]", template: Any = None, chat: bool = False, batch_size: int = 8,
               keep_per_prompt: bool = False, progress: bool = True) -> TaskVector:
    """THE per-seed recipe (one vector for one demo seed), shared by :func:`extract_task_vectors`, the ``tv-lens``
    commands and the demo: one ``n_shots`` ICL prompt per item of the ``split`` (demos drawn with ``seed`` from
    ``pool``, default the task's train split), read at ``position`` (the last demo's delimiter) and averaged.

    The demos never come from the items the vector is averaged over (:func:`tv_lens.protocol.demo_pool`), except
    for ``split="train"``: then each prompt's demos are the OTHER train items (a train vector is never scored on
    train, so nothing leaks into val or test).

    Args:
        items: a ``Task`` (its ``split`` items; demos from ``train``) or a list of items (then ``pool=`` is needed).
        modality: of the demos (and of the prompt's query).
        split: which split of a ``Task`` to average over (``"val"``, ``"train"`` or ``"test"``).

    Raises:
        TaskError: no pool, a pool that shares items with the split, too few pool items (with an image) for
            ``n_shots``; an unknown split.

    Returns:
        A :class:`TaskVector` with ``seed`` and ``task`` set.
    """
    from .prompts import icl
    from .protocol import demo_pool

    name = getattr(items, "name", None)
    if isinstance(items, (list, tuple)) or not hasattr(items, "train"):
        queries = scored = list(items)
    else:
        if split not in ("val", "train", "test"):
            raise TaskError(f"split must be 'val', 'train' or 'test', not {split!r}.")
        queries = list(getattr(items, split))
        scored = [] if split == "train" else queries   # a train vector: each prompt's demos are the OTHER items
        pool = list(items.train) if pool is None else pool
    pool = demo_pool(scored, pool, modality, n_shots, name or "task")
    prompts = icl(queries, n_shots=n_shots, modality=modality, pool=pool, seed=seed, template=template, chat=chat)
    return extract_task_vector(model, prompts, layers=layers, position=position, batch_size=batch_size,
                               keep_per_prompt=keep_per_prompt, task=name, seed=seed, progress=progress)


def extract_task_vectors(model, items: Any, n_shots: int = 5, modality: str = "text", seeds: Sequence[int] = (0, 1, 2),
                         pool: Sequence | None = None, layers: str | int | Sequence[int] = "all",
                         template: Any = None, chat: bool = False, batch_size: int = 8,
                         keep_per_prompt: bool = False, progress: bool = True) -> list[TaskVector]:
    """One task vector per seed, as the paper builds them: for each seed, one ``n_shots`` ICL prompt per
    validation item (demos from ``pool``, default the task's train split), read at the last demo's delimiter
    (:func:`icl_vector`, the one recipe the CLI and the demo use too).

    Args:
        items: a ``Task`` (its ``val`` items; demos from ``train``) or a list of items (then ``pool=`` is needed).
        modality: of the demos (and of the prompt's query).

    Returns:
        ``[TaskVector per seed]`` — pass it to :func:`tv_lens.layer_sweep` and as ``vectors={"patch": ...}`` to
        :func:`tv_lens.evaluate` (seed ``i`` of the evaluation patches vector ``i``).
    """
    return [icl_vector(model, items, seed, n_shots=n_shots, modality=modality, pool=pool, layers=layers,
                       template=template, chat=chat, batch_size=batch_size, keep_per_prompt=keep_per_prompt,
                       progress=progress)
            for seed in seeds]


def instruction_vector(model, text: str, layers: str | int | Sequence[int] = "all",
                       task: str | None = None) -> TaskVector:
    """The instruction-based vector: one forward over the bare instruction, read at its last token."""
    return extract_task_vector(model, [instruction(text)], layers=layers, position="last", task=task,
                               kind="instruction", progress=False)


def ensemble(vectors: Sequence[TaskVector], weights: Sequence[float] | None = None) -> TaskVector:
    """Weighted mean of task vectors (paper: exemplar + instruction, equal weights), on their common layers."""
    vectors = list(vectors)
    if not vectors:
        raise VectorError("Nothing to ensemble.")
    weights = [1.0] * len(vectors) if weights is None else list(weights)
    if len(weights) != len(vectors) or sum(weights) <= 0:
        raise VectorError("Give one positive-sum weight per vector.")
    d_models = {v.d_model for v in vectors}
    if len(d_models) != 1:
        raise VectorError(f"Vectors of different widths {sorted(d_models)} cannot be ensembled.")
    layers = sorted(set.intersection(*(set(v.layers) for v in vectors)))
    if not layers:
        raise VectorError("These vectors share no layer.")
    total = sum(w * torch.stack([v[layer] for layer in layers]) for w, v in zip(weights, vectors))
    first = vectors[0]
    member_kinds = [kind for v in vectors for kind in (v.extra.get("member_kinds") or [v.kind])]
    return replace(first, vectors=total / sum(weights), layers=layers, kind="ensemble", per_prompt=None,
                   n_prompts=sum(v.n_prompts for v in vectors), modality="+".join(str(v.modality) for v in vectors),
                   extra={"members": [repr(v) for v in vectors], "member_kinds": member_kinds, "weights": weights})


def transfer(vector: TaskVector, to) -> TaskVector:
    """Use a vector from one model (e.g. the base LLM) in another (its VLM): same layer indices.

    Raises:
        VectorError: different hidden size, or a layer the target does not have.
    """
    vector.check_compatible(to)
    return replace(vector, extra={**vector.extra, "transferred_from": vector.model_name,
                                  "transferred_to": to.cfg.model_name})


def cosine_similarity(a: TaskVector, b: TaskVector, layers: Sequence[int] | None = None) -> Tensor:
    """Cosine similarity per shared layer (``[n_layers]``), as in Table 4."""
    if a.d_model != b.d_model:
        raise VectorError(f"Widths differ: {a.d_model} vs {b.d_model}.")
    layers = sorted(set(a.layers) & set(b.layers)) if layers is None else list(layers)
    if not layers:
        raise VectorError("The two vectors share no layer.")
    va = torch.stack([a[layer] for layer in layers])
    vb = torch.stack([b[layer] for layer in layers])
    return torch.nn.functional.cosine_similarity(va, vb, dim=-1)


__all__ = ["TaskVector", "cosine_similarity", "ensemble", "extract_task_vector", "extract_task_vectors",
           "icl_vector", "instruction_vector",
           "transfer"]
