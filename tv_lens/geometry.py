"""Geometry of task vectors: cosine-similarity matrices, Table 4's matched-vs-mismatched similarity, 2-D maps.

Vectors are :class:`~tv_lens.vectors.TaskVector` s (a layer picks the row) or plain ``[d_model]`` tensors already
taken at a layer. Everything is computed in float64 on CPU and returned as pandas data; plotting is in
:mod:`tv_lens.plot`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InputError, VectorError
from .vectors import TaskVector

METHODS = ("pca", "tsne")


def vector_label(vector: TaskVector) -> str:
    """``task · kind · modality · model`` (parts that are unknown are left out)."""
    parts = [vector.task, vector.kind, vector.modality, vector.model_name]
    return " · ".join(str(p) for p in parts if p)


def _at(vector: TaskVector | Tensor, layer: int | None) -> Float[Tensor, " d_model"]:
    if isinstance(vector, TaskVector):
        if layer is None:
            raise InputError("Say which layer to read TaskVectors at (layer=...).")
        return vector[layer].double().cpu()
    if isinstance(vector, Tensor) and vector.ndim == 1:
        return vector.double().cpu()
    raise VectorError(f"Expected a TaskVector or a [d_model] tensor, got "
                      f"{type(vector).__name__}{tuple(vector.shape) if isinstance(vector, Tensor) else ''}.")


def _labelled(vectors: Sequence | Mapping) -> tuple[list[str], list]:
    if isinstance(vectors, Mapping):
        labels, values = [str(k) for k in vectors], list(vectors.values())
    else:
        values = list(vectors)
        labels = [vector_label(v) if isinstance(v, TaskVector) else f"vector {i}" for i, v in enumerate(values)]
    if not values:
        raise VectorError("No vectors given.")
    seen: dict[str, int] = {}
    unique = []
    for label in labels:  # two vectors with the same provenance still get their own row
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique, values


def _stack(values: Sequence, layer: int | None) -> Float[Tensor, "n d_model"]:
    rows = [_at(v, layer) for v in values]
    widths = sorted({r.shape[0] for r in rows})
    if len(widths) != 1:
        raise VectorError(f"Vectors of different widths {widths} cannot be compared.")
    return torch.stack(rows)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def similarity_matrix(vectors: Sequence[TaskVector | Tensor] | Mapping[str, TaskVector | Tensor],
                      layer: int | None = None) -> pd.DataFrame:
    """Cosine similarity between every pair of vectors at ``layer``.

    Args:
        vectors: a list (labels from task · kind · modality · model) or ``{label: vector}``.
        layer: the model layer to read TaskVectors at (negative counts from the end).

    Returns:
        A square DataFrame (index = columns = labels).

    Raises:
        VectorError: no vectors, different widths, a layer a vector does not have.
    """
    labels, values = _labelled(vectors)
    stacked = _stack(values, layer)
    return pd.DataFrame(_cosine(stacked, stacked).numpy(), index=labels, columns=labels)


@dataclass
class MatchedSimilarity:
    """Table 4: cosine similarity of the same task's vectors in two models (matched) against pairs of DIFFERENT
    tasks across the two models (mismatched, the "Random" row's baseline).

    Attributes:
        matrix: tasks (rows, from ``a``) × tasks (columns, from ``b``) cosine similarities.
        layer: the layer compared.
    """

    matrix: pd.DataFrame
    layer: int | None

    @property
    def by_task(self) -> pd.DataFrame:
        """Per task: ``matched`` (its diagonal entry) and ``mismatched`` (mean over every pair that pairs this task
        with another one, on either side; NaN with a single task)."""
        values = torch.tensor(self.matrix.to_numpy())
        n = values.shape[0]
        off = ~torch.eye(n, dtype=torch.bool)
        rows = []
        for i, task in enumerate(self.matrix.index):
            pairs = torch.cat([values[i][off[i]], values[:, i][off[:, i]]])
            rows.append({"task": task, "matched": float(values[i, i]),
                         "mismatched": float(pairs.mean()) if pairs.numel() else float("nan")})
        return pd.DataFrame(rows).set_index("task")

    @property
    def matched(self) -> float:
        """Mean of the diagonal."""
        return float(torch.tensor(self.matrix.to_numpy()).diagonal().mean())

    @property
    def mismatched(self) -> float:
        """Mean of the off-diagonal entries (NaN with a single task)."""
        values = torch.tensor(self.matrix.to_numpy())
        off = values[~torch.eye(values.shape[0], dtype=torch.bool)]
        return float(off.mean()) if off.numel() else float("nan")

    def __repr__(self) -> str:
        return (f"MatchedSimilarity(layer={self.layer}, tasks={len(self.matrix)}, matched={self.matched:.3f}, "
                f"mismatched={self.mismatched:.3f})")

    def _repr_html_(self) -> str:
        return (f"<b>MatchedSimilarity</b> layer {self.layer}: matched {self.matched:.3f}, mismatched "
                f"{self.mismatched:.3f}" + self.by_task.round(3).to_html())


def matched_vs_mismatched(vectors_a: Mapping[str, TaskVector | Tensor], vectors_b: Mapping[str, TaskVector | Tensor],
                          layer: int | None = None) -> MatchedSimilarity:
    """Compare two models' (or two specifications') vectors task by task, with the mismatched-pairs baseline.

    Args:
        vectors_a, vectors_b: ``{task: vector}`` (e.g. LLM and VLM text-ICL vectors); only common tasks are used,
            in ``vectors_a`` 's order.
        layer: the layer to read TaskVectors at.

    Raises:
        VectorError: no task in common, different widths.
    """
    tasks = [t for t in vectors_a if t in vectors_b]
    if not tasks:
        raise VectorError(f"The two sets share no task ({sorted(vectors_a)} vs {sorted(vectors_b)}).")
    a, b = _stack([vectors_a[t] for t in tasks], layer), _stack([vectors_b[t] for t in tasks], layer)
    if a.shape[1] != b.shape[1]:
        raise VectorError(f"Widths differ: {a.shape[1]} vs {b.shape[1]}.")
    return MatchedSimilarity(pd.DataFrame(_cosine(a, b).numpy(), index=tasks, columns=tasks), layer)


def pca_2d(points: Float[Tensor, "n d"]) -> Float[Tensor, "n 2"]:
    """Project on the first two principal components (torch SVD; each axis's sign fixed so that its
    largest-magnitude loading is positive, for reproducible pictures). Fewer than two directions → zeros."""
    points = points.double()
    centered = points - points.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    axes = vh[:2]
    signs = axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    coords = centered @ (axes * signs).T
    if coords.shape[1] < 2:
        coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 2 - coords.shape[1])], dim=1)
    return coords


def tsne_available() -> bool:
    """Whether scikit-learn (needed for t-SNE only) is importable."""
    return importlib.util.find_spec("sklearn") is not None


def _tsne_2d(points: Tensor, seed: int, perplexity: float | None) -> Tensor:
    if not tsne_available():
        raise ModuleNotFoundError("t-SNE needs scikit-learn (`pip install scikit-learn`); method='pca' needs "
                                  "nothing extra.")
    from sklearn.manifold import TSNE

    n = points.shape[0]
    perplexity = min(30.0, max(1.0, (n - 1) / 3)) if perplexity is None else perplexity
    if not 0 < perplexity < n:
        raise InputError(f"t-SNE perplexity must be in (0, {n}) for {n} points, got {perplexity}.")
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        points.double().numpy())
    return torch.as_tensor(coords.copy())


def embed_vectors(vectors: Sequence[TaskVector] | Mapping[str, TaskVector], layers: Sequence[int] | None = None,
                  method: str = "pca", per_prompt: bool = False, seed: int = 0,
                  perplexity: float | None = None) -> pd.DataFrame:
    """2-D map of task vectors, fit separately at each layer (the paper's t-SNE panels, appendix A.4).

    Args:
        vectors: TaskVectors (or ``{label: vector}``).
        layers: default: every layer all vectors share.
        method: ``"pca"`` (torch, always available) or ``"tsne"`` (needs scikit-learn).
        per_prompt: one point per prompt (vectors must be extracted with ``keep_per_prompt=True``) instead of one
            per mean vector.
        seed, perplexity: t-SNE settings (perplexity default: ``min(30, (n - 1) / 3)``).

    Returns:
        DataFrame ``layer, x, y, label, task, kind, modality, model, prompt`` (``prompt`` -1 for mean vectors).

    Raises:
        VectorError: no vectors, different widths, no shared layer, fewer than two points, missing per-prompt data.
        ModuleNotFoundError: ``method="tsne"`` without scikit-learn.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, not {method!r}.")
    labels, values = _labelled(vectors)
    if not all(isinstance(v, TaskVector) for v in values):
        raise VectorError("embed_vectors takes TaskVectors (their provenance labels the points).")
    if layers is None:
        layers = sorted(set.intersection(*(set(v.layers) for v in values)))
        if not layers:
            raise VectorError("These vectors share no layer.")
    layers = [layers] if isinstance(layers, int) else list(layers)
    rows = []
    for layer in layers:
        points, meta = [], []
        for label, vec in zip(labels, values):
            if per_prompt:
                if vec.per_prompt is None:
                    raise VectorError(f"{label} kept no per-prompt vectors; extract with keep_per_prompt=True.")
                block = vec.per_prompt[:, vec._row(layer)]
                points += list(block)
                meta += [(label, vec, i) for i in range(block.shape[0])]
            else:
                points.append(vec[layer])
                meta.append((label, vec, -1))
        stacked = _stack(points, None)
        if stacked.shape[0] < 2:
            raise VectorError("A 2-D map needs at least two points.")
        coords = pca_2d(stacked) if method == "pca" else _tsne_2d(stacked, seed, perplexity)
        for (label, vec, prompt), (x, y) in zip(meta, coords.tolist()):
            rows.append({"layer": layer % vec.n_model_layers, "x": x, "y": y, "label": label, "task": vec.task,
                         "kind": vec.kind, "modality": vec.modality, "model": vec.model_name, "prompt": prompt})
    return pd.DataFrame(rows)


__all__ = ["MatchedSimilarity", "embed_vectors", "matched_vs_mismatched", "pca_2d", "similarity_matrix",
           "tsne_available", "vector_label"]
