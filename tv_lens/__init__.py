"""tv_lens: task vectors and TransformerLens-style hooks for vision-language models."""

from ._version import __version__
from . import (geometry, heads, hooks, image_geometry, image_maps, lens, methods, patching, plot, positions, progress,
               prompts, protocol, runs, stats, tasks)
from .evaluate import EvalResult, SweepResult, evaluate, evaluate_conflict, layer_sweep, sample_efficiency
from .model import HookedModelConfig, HookedMultimodalModel
from .offline import load_smollm2
from .vectors import (TaskVector, cosine_similarity, ensemble, extract_task_vector, extract_task_vectors,
                      instruction_vector, transfer)

__all__ = [
    "EvalResult",
    "HookedModelConfig",
    "HookedMultimodalModel",
    "SweepResult",
    "TaskVector",
    "__version__",
    "cosine_similarity",
    "ensemble",
    "evaluate",
    "evaluate_conflict",
    "extract_task_vector",
    "extract_task_vectors",
    "geometry",
    "heads",
    "hooks",
    "image_geometry",
    "image_maps",
    "instruction_vector",
    "layer_sweep",
    "lens",
    "load_smollm2",
    "methods",
    "patching",
    "plot",
    "positions",
    "progress",
    "prompts",
    "protocol",
    "runs",
    "sample_efficiency",
    "stats",
    "tasks",
    "transfer",
]
