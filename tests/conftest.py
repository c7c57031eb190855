import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OMP_NUM_THREADS wins (make test sets 1 per xdist worker); else up to 2 threads
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A docs page's result rides on its test report, so the summary also works under pytest-xdist workers."""
    outcome = yield
    if call.when != "call" or item.get_closest_marker("docs") is None:
        return
    import sys
    from dataclasses import asdict

    module = sys.modules.get("test_docs")
    results = getattr(module, "RESULTS", None) if module is not None else None
    if results:
        outcome.get_result().user_properties.append(("doc_page", asdict(results[-1])))


def pytest_terminal_summary(terminalreporter):
    """Per docs page: blocks total / run / passed / marked, when the doc tests ran in this session."""
    found = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "doc_page":
                    found.setdefault(value["page"], value)
    if found:
        from docs_harness import ROOT, BlockResult, PageResult, summary_table, write_report

        pages = [PageResult(page=v["page"], blocks=[BlockResult(**b) for b in v["blocks"]], checks=v["checks"],
                            wall_s=v["wall_s"]) for v in found.values()]
        pages.sort(key=lambda p: p.page)
        terminalreporter.section("doc tests")
        terminalreporter.write_line(summary_table(pages))
        report = ROOT / "build" / "doc_tests.json"
        write_report(pages, report)
        terminalreporter.write_line(f"per-block times: {report}")
