"""How a run builds its task vectors: one recipe, the same in the CLI, the demo and a notebook.

:class:`Recipe` holds the prompt options (shots, template, chat) and the batching; its :meth:`Recipe.vector` is
:func:`tv_lens.vectors.icl_vector` — the per-seed recipe of :func:`tv_lens.extract_task_vectors`, with its
:func:`tv_lens.protocol.demo_pool` check (demos never come from the items the vector is averaged over).

    recipe = tvl.runs.Recipe(n_shots=5, template="qa")
    vectors = recipe.patch_vectors(model, task, ["patch", "xpatch"], seeds=(0, 1, 2), query_modality="image")
    tvl.evaluate(model, task, ["patch", "xpatch"], vectors=vectors, layer=..., query_modality="image")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import tasks as T
from ..errors import IncompatibleArgumentsError, TaskError
from ..methods import BY_NAME
from ..vectors import TaskVector, ensemble, icl_vector, instruction_vector

Layers = Any   # "all", an int, or a list of ints


@dataclass(frozen=True)
class Recipe:
    """The options every vector of a run is built with.

    Attributes:
        n_shots: demos per ICL prompt (paper: 5).
        template: the prompt layout (a name in :data:`tv_lens.prompts.TEMPLATES`).
        chat: ICL prompts in the model's chat template.
        batch_size: prompts per forward pass.
        progress: show progress bars.
    """

    n_shots: int = 5
    template: Any = "qa"
    chat: bool = False
    batch_size: int = 8
    progress: bool = True

    def vector(self, model, task: T.Task, modality: str, seed: int, layers: Layers = "all", split: str = "val",
               position: Any = "delimiter[-1]") -> TaskVector:
        """The mean task vector of ``task.<split>`` ICL prompts with ``modality`` demos from ``task.train``."""
        return icl_vector(model, task, seed, n_shots=self.n_shots, modality=modality, split=split, layers=layers,
                          position=position, template=self.template, chat=self.chat, batch_size=self.batch_size,
                          progress=self.progress)

    def vectors(self, model, task: T.Task, modality: str, seeds: Sequence[int], layers: Layers = "all"
                ) -> list[TaskVector]:
        """One :meth:`vector` per seed (what ``layer_sweep`` and ``evaluate`` take for a task)."""
        return [self.vector(model, task, modality, seed, layers) for seed in seeds]

    def patch_vectors(self, model, task: T.Task, methods: Sequence[str], seeds: Sequence[int],
                      query_modality: str, layers: Layers = "all") -> dict[str, list[TaskVector]]:
        """``{method: one vector per seed}`` for the patch methods among ``methods`` (others are skipped).

        ``patch``: demos in the query's modality; ``xpatch``: the other modality; ``instruction_patch``: the
        task's instruction (one vector); ``ensemble_patch``: text demos + the instruction (the paper's ensemble).
        """
        cache: dict[tuple[str | None, int], TaskVector] = {}

        def icl(modality: str | None, seed: int) -> TaskVector:
            if modality is None:   # every icl / ensemble row names its demos' modality (tv_lens.methods)
                raise IncompatibleArgumentsError("this method's row names no demo modality for its vector")
            if (modality, seed) not in cache:
                cache[modality, seed] = self.vector(model, task, modality, seed, layers)
            return cache[modality, seed]

        def instruction() -> TaskVector:   # one forward, shared by instruction_patch and ensemble_patch
            if (None, -1) not in cache:
                cache[None, -1] = task_instruction_vector(model, task, layers)
            return cache[None, -1]

        out: dict[str, list[TaskVector]] = {}
        for row in (BY_NAME[m] for m in methods if m in BY_NAME and BY_NAME[m].patches_task_vector):
            source = row.source_modality(query_modality)   # what each method patches: its row in tv_lens.methods
            if row.vector_kind == "icl":
                out[row.name] = [icl(source, seed) for seed in seeds]
            elif row.vector_kind == "instruction":
                out[row.name] = [instruction()]
            else:   # ensemble: the paper's exemplar (text demos) + instruction vector
                out[row.name] = [ensemble([icl(source, seed), instruction()]) for seed in seeds]
        return out


def task_instruction_vector(model, task: T.Task, layers: Layers = "all") -> TaskVector:
    """The vector of ``task``'s instruction (:func:`tv_lens.instruction_vector`).

    Raises:
        TaskError: the task has no instruction.
    """
    if not task.instruction:
        raise TaskError(f"task {task.name!r} has no instruction: add an \"instruction\" field to its JSON file")
    return instruction_vector(model, task.instruction, layers=layers, task=task.name)


__all__ = ["Recipe", "task_instruction_vector"]
