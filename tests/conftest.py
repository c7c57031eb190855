import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, hooked (loaded once per test session)."""
    from tv_lens import HookedMultimodalModel
    from tv_lens.offline import load_smollm2

    model, tokenizer = load_smollm2()
    return HookedMultimodalModel.from_hf(model, tokenizer=tokenizer)
