"""tv_lens: task vectors and TransformerLens-style hooks for vision-language models."""

from . import geometry, heads, hooks, lens, patching, plot, positions, progress, prompts, protocol, tasks
from .evaluate import EvalResult, SweepResult, evaluate, evaluate_conflict, layer_sweep, sample_efficiency
from .model import HookedModelConfig, HookedMultimodalModel
from .offline import load_smollm2
from .vectors import (TaskVector, cosine_similarity, ensemble, extract_task_vector, extract_task_vectors,
                      instruction_vector, transfer)

__version__ = "0.1.0"

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
    "instruction_vector",
    "layer_sweep",
    "lens",
    "load_smollm2",
    "patching",
    "plot",
    "positions",
    "progress",
    "prompts",
    "protocol",
    "sample_efficiency",
    "tasks",
    "transfer",
]
