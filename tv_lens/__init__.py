"""tv_lens: task vectors and TransformerLens-style hooks for vision-language models."""

from .model import HookedModelConfig, HookedMultimodalModel

__version__ = "0.1.0"

__all__ = ["HookedModelConfig", "HookedMultimodalModel", "__version__"]
