"""The docs run as written: every page's python blocks in order in one kernel (tests/docs_harness.py), hub models
replaced by offline stand-ins (tests/docs_standins.py); the API reference lists every public name.

``pytest -m "not docs"`` leaves out the page runs (about 10 minutes of wall time in all on 2 shared cores); the
harness's own tests stay.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest

import docs_harness
import docs_standins
from docs_harness import DOCS, MarkerError, parse_page, run_page

PAGES = sorted(DOCS.glob("*.md"))
RESULTS: list = []          # PageResults of this session, printed as a table by conftest's terminal summary


@pytest.mark.docs
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_page_runs_as_written(page):
    result = run_page(page)
    RESULTS.append(result)
    assert result.ok, result.failure_message()


# --- the harness itself -------------------------------------------------------------------------------------------

def _page(tmp_path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text))
    return path


def test_parse_finds_python_blocks_with_their_markers(tmp_path):
    page = _page(tmp_path, """\
        # T
        ```bash
        echo not python
        ```
        ```python
        x = 1
        ```
        <!-- docs-test: assert x == 1 -->

        <!-- docs-test: skip needs a GPU -->
        ```python
        import cuda_only
        ```
        ```py
        y = x + 1
        ```
        """)
    blocks = parse_page(page)
    assert [b.source for b in blocks] == ["x = 1", "import cuda_only", "y = x + 1"]
    assert [b.line for b in blocks] == [5, 11, 14]
    assert blocks[0].asserts == ["x == 1"] and blocks[1].skip == "needs a GPU" and blocks[2].skip is None


@pytest.mark.parametrize("text, message", [
    ("<!-- docs-test: skip -->\n```python\nx\n```\n", "needs a reason"),
    ("<!-- docs-test: skipp reason -->\n```python\nx\n```\n", "unknown marker"),
    ("<!-- docs-test: assert x -->\n", "must follow a python block"),
    ("```python\nx\n```\nprose\n<!-- docs-test: assert x -->\n", "must follow a python block"),
    ("<!-- docs-test: skip why -->\nprose\n```python\nx\n```\n", "right before a block"),
    ("<!-- docs-test: skip why -->\n```bash\nls\n```\n", "python block"),
])
def test_a_malformed_marker_is_an_error_not_a_silent_skip(tmp_path, text, message):
    with pytest.raises(MarkerError, match=message):
        parse_page(_page(tmp_path, text))


def test_blocks_share_one_kernel_and_marked_blocks_are_counted_not_run(tmp_path):
    page = _page(tmp_path, """\
        ```python
        x = 41
        ```
        <!-- docs-test: skip would fail here -->
        ```python
        raise SystemExit("must not run")
        ```
        ```python
        x += 1
        ```
        <!-- docs-test: assert x == 42 -->
        """)
    result = run_page(page)
    assert result.ok, result.failure_message()
    assert (result.total, result.run, result.passed, result.marked, result.checks) == (3, 2, 2, 1, 1)


def test_a_failing_block_names_page_block_line_and_error_and_stops_the_page(tmp_path):
    page = _page(tmp_path, """\
        ```python
        a = 1
        ```

        ```python
        b = undefined_name
        ```
        ```python
        c = 3
        ```
        """)
    result = run_page(page)
    assert not result.ok
    assert [b.status for b in result.blocks] == ["passed", "failed", "not run"]
    message = result.failure_message()
    assert "page.md: block 1 (line 5)" in message and "NameError" in message and "undefined_name" in message
    assert "blocks [2] not run" in message


def test_a_stale_number_in_the_prose_fails_its_check(tmp_path):
    page = _page(tmp_path, """\
        ```python
        accuracy = 0.19
        ```
        <!-- docs-test: assert accuracy == 0.23 -->
        """)
    result = run_page(page)
    assert not result.ok and result.checks == 0
    assert "prose check `accuracy == 0.23` failed" in result.failure_message()


def test_a_hanging_block_is_stopped_by_the_timeout(tmp_path):
    page = _page(tmp_path, "```python\nimport time\ntime.sleep(60)\n```\n")
    result = run_page(page, block_timeout=3)
    assert [b.status for b in result.blocks] == ["failed"] and "timed out" in result.blocks[0].error


def test_summary_counts_per_page(tmp_path):
    page = _page(tmp_path, "```python\nx = 1\n```\n<!-- docs-test: skip no -->\n```python\ny\n```\n")
    table = docs_harness.summary_table([run_page(page)])
    assert re.search(r"page\.md\s+2\s+1\s+1\s+1\s+0", table)


# --- stand-ins ----------------------------------------------------------------------------------------------------

@pytest.fixture
def standins(monkeypatch):
    monkeypatch.setitem(docs_standins.STANDINS, "example-org/tiny-llava-7b", "tiny:llava")
    docs_standins.install()
    yield docs_standins
    docs_standins.uninstall()


def test_a_listed_hub_id_loads_its_stand_in_and_says_so(standins, capsys):
    import tv_lens as tvl

    model = tvl.HookedMultimodalModel.from_pretrained("example-org/tiny-llava-7b", dtype="bfloat16",
                                                      device_map="auto")
    assert model.adapter.family == "llava" and model.cfg.n_layers == 3
    out = capsys.readouterr().out
    assert "example-org/tiny-llava-7b -> stand-in: tiny:llava" in out and "device_map='auto'" in out


def test_a_stand_in_refuses_arguments_it_cannot_honour(standins):
    import tv_lens as tvl

    with pytest.raises(TypeError, match="revision"):
        tvl.HookedMultimodalModel.from_pretrained("example-org/tiny-llava-7b", revision="main")


def test_other_ids_reach_the_real_loader_and_uninstall_restores_it(standins, tmp_path):
    import tv_lens as tvl

    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError):
        tvl.HookedMultimodalModel.from_pretrained(str(missing))
    standins.uninstall()
    assert "from_pretrained" in vars(tvl.HookedMultimodalModel)
    assert not getattr(tvl.HookedMultimodalModel.from_pretrained, "__qualname__", "").startswith("install")


def test_the_stand_in_table_in_doc_tests_md_matches_the_code():
    text = (DOCS / "doc_tests.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", text, flags=re.M))
    assert rows == docs_standins.STANDINS


def test_every_hub_id_a_page_loads_has_a_stand_in_or_a_skip_marker():
    for page in PAGES:
        for block in parse_page(page):
            for hub_id in re.findall(r"from_pretrained\(\s*\"([^\"]+/[^\"]+)\"", block.source):
                assert block.skip or hub_id in docs_standins.STANDINS, (
                    f"{page.name} block {block.index} loads {hub_id}: add it to tests/docs_standins.py STANDINS "
                    "and the table in docs/doc_tests.md, or mark the block")


# --- the API reference --------------------------------------------------------------------------------------------

def _api_directives() -> set[str]:
    """``::: target`` directives of api.md and of the pages it sends the reader to for an API section."""
    api = (DOCS / "api.md").read_text()
    pages = {"api.md"} | set(re.findall(r"\]\(([\w_]+\.md)#api\)", api))
    out = set()
    for name in pages:
        out |= set(re.findall(r"^::: ([\w.]+)\s*$", (DOCS / name).read_text(), flags=re.M))
    return out


def _covered(path: str, directives: set[str]) -> bool:
    return any(path == d or path.startswith(d + ".") for d in directives)


def test_api_reference_lists_every_name_in_tv_lens_all():
    import tv_lens

    directives = _api_directives()
    missing = []
    for name in tv_lens.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(tv_lens, name)
        path = obj.__name__ if hasattr(obj, "__path__") or type(obj).__name__ == "module" else \
            f"{obj.__module__}.{getattr(obj, '__qualname__', name)}"
        if not _covered(path, directives):
            missing.append(f"{name} ({path})")
    assert not missing, f"docs/api.md (or a page it links with #api) has no ::: entry for: {', '.join(missing)}"


def test_api_reference_lists_every_public_module():
    import tv_lens

    directives = _api_directives()
    modules = [m.name for m in pkgutil.iter_modules(tv_lens.__path__) if not m.name.startswith("_")]
    missing = [m for m in modules if not any(d == f"tv_lens.{m}" or d.startswith(f"tv_lens.{m}.")
                                               for d in directives)]
    assert not missing, f"docs/api.md has no ::: entry under: {', '.join('tv_lens.' + m for m in missing)}"


def test_api_reference_lists_the_public_names_of_each_module_it_documents_in_part():
    """A module documented name by name (``::: tv_lens.adapters.register_adapter``) must list all of its __all__."""
    directives = _api_directives()
    partial = {d.rsplit(".", 1)[0] for d in directives} - directives - {"tv_lens"}   # tv_lens: the test above
    missing = []
    for module_name in sorted(partial):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue                         # the parent is a class, not a module
        for name in getattr(module, "__all__", ()):
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            target = f"{getattr(obj, '__module__', module_name)}.{getattr(obj, '__qualname__', name)}"
            if not (_covered(f"{module_name}.{name}", directives) or _covered(target, directives)):
                missing.append(f"{module_name}.{name}")
    assert not missing, f"docs/api.md misses: {', '.join(missing)}"


# --- numbers generated from result files --------------------------------------------------------------------------

def test_generated_tables_match_their_result_files():
    import docs_numbers

    assert docs_numbers.stale() == []


def test_every_docs_table_row_has_its_headers_number_of_cells():
    import docs_numbers

    pages = sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]
    problems = {page.name: docs_numbers.table_problems(page.read_text()) for page in pages}
    assert not {name: found for name, found in problems.items() if found}


def test_an_unescaped_pipe_in_a_table_cell_is_found():
    import docs_numbers

    table = "| a | b |\n|---|---|\n| `x|y` | 1 |\n| max |diff| 2 | 3 |\n"
    assert docs_numbers.table_problems(table) == ["line 4: 4 cells, header has 2"]
    assert docs_numbers.table_problems(table.replace("|diff|", "abs. diff")) == []


def test_a_changed_result_file_makes_the_page_stale(tmp_path):
    import docs_numbers

    for page, source, _ in docs_numbers.GENERATED_TABLES:
        for rel in (page, source):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text((docs_numbers.ROOT / rel).read_text())
        src = tmp_path / source
        src.write_text(src.read_text().replace("| 1.016 |", "| 1.017 |", 1))
    assert docs_numbers.stale(tmp_path)
    docs_numbers.write(tmp_path)
    assert docs_numbers.stale(tmp_path) == []
