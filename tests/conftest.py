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


# --- issue 18: doc tests ---
def pytest_configure(config):
    config.addinivalue_line("markers", "docs: runs a docs page's code blocks (tests/test_docs.py); deselect with -m 'not docs'")


def pytest_terminal_summary(terminalreporter):
    """Per docs page: blocks total / run / passed / marked, when the doc tests ran in this session."""
    import sys

    module = sys.modules.get("test_docs")
    if module is not None and getattr(module, "RESULTS", None):
        from docs_harness import ROOT, summary_table, write_report

        terminalreporter.section("doc tests")
        terminalreporter.write_line(summary_table(module.RESULTS))
        report = ROOT / "build" / "doc_tests.json"
        write_report(module.RESULTS, report)
        terminalreporter.write_line(f"per-block times: {report}")
