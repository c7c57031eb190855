"""The methods of the paper's Table 3, one frozen row each: what every other module asks about a method.

The same medicine as the hook-site table: a method is a declaration (its name, its title, where its demos come from,
which vector it patches and from which modality, whether it needs a layer), and :mod:`tv_lens.protocol`,
:mod:`tv_lens.evaluate`, :mod:`tv_lens.runs`, the ``tv-lens`` commands and the demo read the rows instead of
spelling method names. Adding a method is a row here and its code path in :func:`tv_lens.evaluate`.

A modality in a row is relative to the QUERY: ``"query"`` (the query's own modality), ``"other"`` (the other one),
or a fixed ``"text"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import IncompatibleArgumentsError

#: Vector kinds patched into the residual stream (a :class:`tv_lens.TaskVector` of that ``kind``).
RESIDUAL_KINDS = ("icl", "instruction", "ensemble")


@dataclass(frozen=True)
class Method:
    """One Table-3 method.

    Attributes:
        name: what :func:`tv_lens.evaluate` takes (``"xpatch"``).
        title: the table's name for it (``"xPatch"``); :meth:`label` adds the demos' modality.
        demos: where in-context demos come from (``"query"``, ``"other"``, ``"text"``), ``None``: a bare query.
        vector_kind: the kind of what it patches (``"icl"``, ``"instruction"``, ``"ensemble"``,
            ``"function_vector"``, ``"head_means"``), ``None``: nothing patched.
        vector_modality: the modality of the patched vector's demos (``"query"``, ``"other"``, ``"text"``), ``None``
            when it has no demos.
        needs_layer: it patches at a layer (``layer=`` in :func:`tv_lens.evaluate`).
        baseline: a reference row (no context, the majority label), not a method under test.
        cli: ``tv-lens evaluate`` can run it (the head methods need a head selection made in Python).
    """

    name: str
    title: str
    demos: str | None = None
    vector_kind: str | None = None
    vector_modality: str | None = None
    needs_layer: bool = False
    baseline: bool = False
    cli: bool = True

    @property
    def in_context(self) -> bool:
        """Demos in the prompt (drawn per seed for the whole split)."""
        return self.demos is not None

    @property
    def patches_task_vector(self) -> bool:
        """It patches a residual-stream :class:`tv_lens.TaskVector` (checked by :func:`tv_lens.protocol.check_vector`)."""
        return self.vector_kind in RESIDUAL_KINDS

    def demo_modality(self, query_modality: str) -> str | None:
        """The modality of the in-context demos for ``query_modality`` queries (``None``: no demos)."""
        return _resolve(self.demos, query_modality)

    def source_modality(self, query_modality: str) -> str | None:
        """The modality of the demos the patched vector must come from (``None``: no demos behind it)."""
        return _resolve(self.vector_modality, query_modality)

    def label(self, query_modality: str = "image") -> str:
        """The row's name in a table of ``query_modality`` queries: ``"Text ICL xPatch"`` for image queries."""
        modality = self.demo_modality(query_modality) if self.in_context else self.source_modality(query_modality)
        if self.baseline or modality is None or self.vector_kind not in (None, "icl"):
            return self.title
        return f"{modality.capitalize()} ICL {self.title}"


def _resolve(relative: str | None, query_modality: str) -> str | None:
    if query_modality not in ("text", "image"):
        raise IncompatibleArgumentsError(f"query_modality must be 'text' or 'image', not {query_modality!r}.")
    if relative == "query":
        return query_modality
    if relative == "other":
        return "image" if query_modality == "text" else "text"
    return relative


#: Every method, in Table 3's order.
TABLE = (
    Method("no_context", "No Context", baseline=True),
    Method("majority", "Random (majority label)", demos="text", baseline=True),
    Method("base", "Base", demos="query"),
    Method("xbase", "xBase", demos="other"),
    Method("patch", "Patch", vector_kind="icl", vector_modality="query", needs_layer=True),
    Method("xpatch", "xPatch", vector_kind="icl", vector_modality="other", needs_layer=True),
    Method("instruction_patch", "Instruction Patch", vector_kind="instruction", needs_layer=True),
    Method("ensemble_patch", "Ensemble Patch", vector_kind="ensemble", vector_modality="text", needs_layer=True),
    Method("fv_add", "Function Vector (added)", vector_kind="function_vector", needs_layer=True, cli=False),
    Method("heads_patch", "Heads Patch", vector_kind="head_means", cli=False),
)
BY_NAME = {m.name: m for m in TABLE}

METHODS = tuple(m.name for m in TABLE)
#: Methods that patch a residual-stream task vector.
PATCH_METHODS = tuple(m.name for m in TABLE if m.patches_task_vector)
#: Methods with demos in context (drawn per (task, seed), not per item).
CONTEXT_METHODS = tuple(m.name for m in TABLE if m.in_context)
#: The methods ``tv-lens evaluate`` runs.
CLI_METHODS = tuple(m.name for m in TABLE if m.cli)
#: Methods that patch a residual-stream task vector, and the vector kind each one must be given.
VECTOR_KINDS = {m.name: m.vector_kind for m in TABLE if m.patches_task_vector}


def method(name: str) -> Method:
    """The row of ``name``.

    Raises:
        IncompatibleArgumentsError: no such method (the message lists them).
    """
    try:
        return BY_NAME[name]
    except KeyError:
        raise IncompatibleArgumentsError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.") from None


def method_for_kind(kind: str | None) -> str:
    """The method that patches a vector of ``kind`` (an ICL vector: ``"patch"``)."""
    if kind is None:
        return "patch"
    return next((m.name for m in TABLE if m.vector_kind == kind and kind != "icl"), "patch")


__all__ = ["BY_NAME", "CLI_METHODS", "CONTEXT_METHODS", "METHODS", "Method", "PATCH_METHODS", "RESIDUAL_KINDS",
           "TABLE", "VECTOR_KINDS", "method", "method_for_kind"]
