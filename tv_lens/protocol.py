"""The paper's protocol, checked: which vector each method may patch, where demos may come from, and spread.

:func:`tv_lens.evaluate` calls these so a run cannot silently mislabel its rows:

- :func:`vectors_for_methods` gives each patch method the vector it names, and refuses an ambiguous ``vector=``;
- :func:`check_vector` holds each method to the kind and modality its name promises (Table 3's "Patch" is a
  vector from demos in the QUERY's modality, "xPatch" one from the OTHER modality, ...);
- :func:`demo_pool` never lets ICL demos come from the items being scored;
- :func:`mean_ci` (now in :mod:`tv_lens.stats`, re-exported) is the mean ± 95% confidence half-width over seeds
  that every table reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import IncompatibleArgumentsError, TaskError, VectorError
from .methods import BY_NAME, VECTOR_KINDS, method_for_kind
from .stats import format_ci, mean_ci  # moved to tv_lens.stats; re-exported here


def other_modality(modality: str) -> str:
    """``"image"`` for ``"text"`` and back."""
    if modality not in ("text", "image"):
        raise IncompatibleArgumentsError(f"query_modality must be 'text' or 'image', not {modality!r}.")
    return "image" if modality == "text" else "text"


def vectors_for_methods(methods: Sequence[str], vector: Any, vectors: dict | None) -> dict[str, Any]:
    """``{method: vector or list of vectors}`` for the patch methods in ``methods``.

    ``vectors={"patch": v, "xpatch": w, ...}`` names each method's vector. A bare ``vector=`` is accepted only when
    exactly one patch method runs (otherwise "Patch" and "xPatch" would print the same numbers).

    Raises:
        IncompatibleArgumentsError: both ``vector=`` and ``vectors=``; ``vector=`` with several patch methods;
            a patch method with no vector; a ``vectors`` key for a method that is not run.
    """
    wanted = [m for m in methods if m in VECTOR_KINDS]
    vectors = dict(vectors or {})
    if vector is not None and vectors:
        raise IncompatibleArgumentsError("Pass either vector= or vectors={method: vector}, not both.")
    if vector is not None:
        if not wanted:
            raise IncompatibleArgumentsError(f"vector= was given but none of {list(methods)} patches a task "
                                             "vector; head methods take vectors={'fv_add': fv} or "
                                             "{'heads_patch': means}.")
        if len(wanted) > 1:
            raise IncompatibleArgumentsError(
                f"vector= is ambiguous with several patch methods {wanted}: pass vectors={{"
                + ", ".join(f"'{m}': ..." for m in wanted) + "} so each method gets the vector it names.")
        return {m: vector for m in wanted}
    unused = [k for k in vectors if k not in methods]
    if unused:
        raise IncompatibleArgumentsError(f"vectors= has entries {unused} for methods that are not run "
                                         f"(methods={list(methods)}); drop them or add the methods.")
    missing = [m for m in wanted if vectors.get(m) is None]
    if missing:
        raise IncompatibleArgumentsError(f"Method(s) {missing} need a task vector: pass vectors={{"
                                         + ", ".join(f"'{m}': ..." for m in missing) + "}.")
    return {m: vectors[m] for m in wanted}


def check_vector(method: str, vec: Any, query_modality: str) -> None:
    """Raise :class:`VectorError` unless ``vec`` is what ``method`` claims to patch.

    ==================== ============================================================================
    ``patch``            kind ``"icl"``, modality = the query's (image ICL vector on image queries)
    ``xpatch``           kind ``"icl"``, modality = the other one (text ICL vector on image queries) —
                         also a vector from the base LLM (:func:`tv_lens.transfer`), still kind ``"icl"``
    ``instruction_patch`` kind ``"instruction"``
    ``ensemble_patch``   kind ``"ensemble"`` with an instruction member and an exemplar member
    ==================== ============================================================================

    A vector built by hand (``kind="custom"``) fits no method: set its ``kind`` and ``modality`` to say what it is.
    """
    kind = getattr(vec, "kind", None)
    want = VECTOR_KINDS[method]
    if kind != want:
        raise VectorError(f"Method {method!r} patches a {want!r} vector; this one has kind {kind!r} ({vec!r}). "
                          f"Pass it under the method it is for, e.g. vectors={{'{method_for_kind(kind)}': ...}}.")
    row = BY_NAME[method]   # the method's row in tv_lens.methods
    if row.vector_kind == "icl":
        need = row.source_modality(query_modality)
        if vec.modality != need:
            right = "patch" if vec.modality == query_modality else "xpatch"
            raise VectorError(
                f"Method {method!r} on {query_modality} queries needs a vector from {need} demos; this one is "
                f"from {vec.modality} demos — that is {right!r} (vectors={{'{right}': ...}}).")
    if row.vector_kind == "ensemble":
        kinds = vec.extra.get("member_kinds") or []
        if "instruction" not in kinds or "icl" not in kinds:
            raise VectorError(f"An ensemble_patch vector must ensemble an exemplar (icl) vector AND an instruction "
                              f"vector; its members are {kinds}. Use tvl.ensemble([icl_vec, instruction_vec]).")


def _key(item: Any) -> tuple:
    get = (lambda k: item.get(k)) if isinstance(item, dict) else (lambda k: getattr(item, k, None))
    image = get("image")
    return get("input"), image if isinstance(image, (str, type(None))) else id(image)


def demo_pool(scored: Sequence, pool: Sequence | None, demo_modality: str, n_shots: int, task: str) -> list:
    """The items ICL demos may be drawn from: never the items being scored.

    Raises:
        TaskError: no pool (a bare list of items was given: pass ``pool=``, e.g. ``task.train``); a pool that
            shares items with the scored split; fewer than ``n_shots`` pool items with an image when the demos are
            images (``task.with_images()`` re-splits so that train keeps imaged items).
    """
    if pool is None:
        raise TaskError(f"Task {task!r}: ICL demos need a pool other than the items being scored; pass a Task "
                        "(demos come from its train split) or pool=task.train.")
    pool = list(pool)
    scored_keys = {_key(it) for it in scored}
    shared = [it for it in pool if _key(it) in scored_keys]
    if shared:
        raise TaskError(f"Task {task!r}: {len(shared)} demo-pool item(s) are also being scored (e.g. "
                        f"{_key(shared[0])[0]!r}); demos must never come from the split being scored — pass "
                        "pool=task.train.")
    if demo_modality == "image":
        pool = [it for it in pool if _key(it)[1] is not None]
    if len(pool) < n_shots:
        what = "items with an image" if demo_modality == "image" else "items"
        raise TaskError(f"Task {task!r}: the demo pool has {len(pool)} {what}; {n_shots}-shot prompts need at least "
                        f"{n_shots}. Use task.with_images() (it re-splits so train keeps imaged items) or "
                        "task.resplit(n_val=..., n_test=...) with smaller splits.")
    return pool


__all__ = ["VECTOR_KINDS", "check_vector", "demo_pool", "format_ci", "mean_ci", "other_modality",
           "vectors_for_methods"]
