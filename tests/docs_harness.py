"""Run the ```python blocks of a docs page in order, in ONE Jupyter kernel, the way a reader runs them.

Why nbclient (not pytest-markdown-docs or mktestdocs): a reader pastes the blocks of a page one after the other into
one notebook, so the harness must keep state across blocks, stop a block that hangs, and say which block broke with
its traceback. nbclient gives exactly that — one real kernel per page, a per-cell timeout, per-cell errors and
rich outputs (plotly figures display as they would in a notebook) — and it is already a test dependency
(``tests/test_notebooks.py``). mktestdocs joins blocks into one ``exec`` (no per-block timeout or error position);
pytest-markdown-docs runs each block alone unless every later block is annotated as a continuation.

Markers (HTML comments, invisible on the site), on their own line:

- ``<!-- docs-test: skip REASON -->`` right before a block: the block is not run here (counted as *marked*).
- ``<!-- docs-test: assert EXPR -->`` right after a block: ``assert EXPR`` runs after that block, in the same
  kernel. This is how a number written in the prose is checked against what the code prints.

Hub models: before the first block the harness runs ``docs_standins.install()`` in the kernel (see
``tests/docs_standins.py``): ``HookedMultimodalModel.from_pretrained`` of a hub id listed there loads an offline
stand-in (the reference VLM, SmolLM2-135M, or a tiny model of the family) and prints which one, so the SAME text runs.

Command line: ``python tests/docs_harness.py docs/heads.md [...]`` prints per block what ran and how long it took.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TESTS = Path(__file__).resolve().parent

BLOCK_TIMEOUT_S = float(os.environ.get("DOCS_TEST_BLOCK_TIMEOUT", 420))         # one block; a longer one must be made lighter or marked
HEAVY_S = 10.0                 # blocks slower than this are listed in the summary (the pages state their time)

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<verb>\w[\w-]*)\s*(?P<arg>.*?)\s*-->\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
PYTHON_LANGS = {"python", "py", "python3"}


class MarkerError(ValueError):
    """A ``docs-test`` marker that the harness does not understand (a typo must not silently skip a check)."""


@dataclass
class Block:
    """One ```python block of a page."""

    index: int                  # 0-based, counting python blocks only
    line: int                   # 1-based line of the opening fence
    source: str
    skip: str | None = None     # reason, when marked not runnable here
    asserts: list[str] = field(default_factory=list)


@dataclass
class BlockResult:
    index: int
    line: int
    status: str                 # "passed", "failed", "marked", "not run" (an earlier block failed)
    seconds: float = 0.0
    cpu_s: float = 0.0          # CPU time of the kernel process (user + system, all threads): less noisy on a busy box
    error: str = ""


@dataclass
class PageResult:
    page: str
    blocks: list[BlockResult]
    checks: int = 0             # assert markers that ran and held
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.blocks)

    @property
    def run(self) -> int:
        return sum(b.status in ("passed", "failed") for b in self.blocks)

    @property
    def passed(self) -> int:
        return sum(b.status == "passed" for b in self.blocks)

    @property
    def marked(self) -> int:
        return sum(b.status == "marked" for b in self.blocks)

    @property
    def failures(self) -> list[BlockResult]:
        return [b for b in self.blocks if b.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures and all(b.status in ("passed", "marked") for b in self.blocks)

    def failure_message(self) -> str:
        lines = []
        for b in self.failures:
            lines.append(f"{self.page}: block {b.index} (line {b.line}) failed after {b.seconds:.1f} s:\n{b.error}")
        not_run = [b.index for b in self.blocks if b.status == "not run"]
        if not_run:
            lines.append(f"{self.page}: blocks {not_run} not run (they come after the failing block)")
        return "\n".join(lines)


def parse_page(path: Path | str) -> list[Block]:
    """The python blocks of a markdown page, in order, with their markers.

    Raises:
        MarkerError: a ``docs-test`` marker with an unknown verb, a skip without a reason, or a marker that is
            not next to a python block.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending_skip: tuple[int, str] | None = None
    last_block_end: int | None = None          # line index just after the last python block's closing fence
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            verb, arg = marker["verb"], marker["arg"]
            if verb == "skip":
                if not arg:
                    raise MarkerError(f"{path.name}:{i + 1}: `docs-test: skip` needs a reason")
                pending_skip = (i + 1, arg)
            elif verb == "assert":
                if not arg:
                    raise MarkerError(f"{path.name}:{i + 1}: `docs-test: assert` needs an expression")
                between = lines[last_block_end:i] if last_block_end is not None else ["x"]
                if last_block_end is None or any(s.strip() and not _MARKER.match(s) for s in between):
                    raise MarkerError(f"{path.name}:{i + 1}: an assert marker must follow a python block directly")
                blocks[-1].asserts.append(arg)
            else:
                raise MarkerError(f"{path.name}:{i + 1}: unknown marker `docs-test: {verb}` (use skip or assert)")
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending_skip is not None:
                raise MarkerError(f"{path.name}:{pending_skip[0]}: a skip marker must come right before a block")
            i += 1
            continue
        close = re.compile(rf"^ {{0,3}}{re.escape(fence['fence'][0])}{{{len(fence['fence'])},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = "\n".join(s[len(fence["indent"]):] if s.startswith(fence["indent"]) else s for s in lines[i + 1:j])
        if fence["lang"].lower() in PYTHON_LANGS:
            blocks.append(Block(index=len(blocks), line=i + 1, source=body,
                                skip=pending_skip[1] if pending_skip else None))
            last_block_end = j + 1
        elif pending_skip is not None:
            raise MarkerError(f"{path.name}:{pending_skip[0]}: a skip marker must come right before a python block")
        pending_skip = None
        i = j + 1
    return blocks


def _setup_source(workdir: str) -> str:
    return "\n".join([
        "import os, sys",
        f"sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]",
        "os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')",
        "os.environ.setdefault('TQDM_DISABLE', '1')",
        # before torch loads OpenMP: busy-waiting threads slow every op many times over on a shared CPU
        "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')",
        "import torch",
        "torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))",
        "import docs_standins",
        "docs_standins.install()",
        f"os.chdir({workdir!r})",
    ])


def _error_text(exc: BaseException, cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = _ANSI.sub("", "\n".join(out.get("traceback", [])))
            tail = "\n".join(tb.splitlines()[-15:])
            return f"{out.get('ename')}: {out.get('evalue')}\n{tail}"
    return f"{type(exc).__name__}: {exc}"


def _cpu_clock(client):
    """A function giving the kernel process's CPU seconds so far (0.0 when it cannot be read)."""
    try:
        import psutil

        process = psutil.Process(client.km.provisioner.process.pid)
    except Exception:  # no psutil, or a provisioner without a local process: timings stay wall-clock only
        return lambda: 0.0

    def cpu() -> float:
        try:
            t = process.cpu_times()
            return t.user + t.system
        except Exception:
            return 0.0
    return cpu


def run_page(path: Path | str, block_timeout: float = BLOCK_TIMEOUT_S, workdir: str | None = None) -> PageResult:
    """Run every unmarked python block of ``path`` in order in one fresh kernel; stop at the first failure."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    blocks = parse_page(path)
    name = path.name
    results = [BlockResult(b.index, b.line, "marked" if b.skip else "not run") for b in blocks]
    page = PageResult(name, results)
    runnable = [b for b in blocks if not b.skip]
    if not runnable:
        return page
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docs_test_") as tmp:
        cwd = workdir or tmp
        nb = nbformat.v4.new_notebook()
        nb.cells.append(nbformat.v4.new_code_cell(_setup_source(cwd)))
        client = NotebookClient(nb, timeout=block_timeout, kernel_name="python3",
                                resources={"metadata": {"path": cwd}})
        with client.setup_kernel():
            cpu = _cpu_clock(client)
            try:
                client.execute_cell(nb.cells[0], 0)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
                results[runnable[0].index] = BlockResult(runnable[0].index, runnable[0].line, "failed",
                                                         error="harness setup failed: " + _error_text(exc, nb.cells[0]))
                page.wall_s = time.perf_counter() - start
                return page
            for block in runnable:
                cells = [nbformat.v4.new_code_cell(block.source)]
                cells += [nbformat.v4.new_code_cell(f"assert {expr}, {('docs-test assert: ' + expr)!r}")
                          for expr in block.asserts]
                t0, c0 = time.perf_counter(), cpu()
                error = ""
                for k, cell in enumerate(cells):
                    nb.cells.append(cell)
                    try:
                        client.execute_cell(cell, len(nb.cells) - 1)
                    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
                        error = _error_text(exc, cell)
                        if isinstance(exc, CellTimeoutError):
                            error = f"timed out after {block_timeout:.0f} s (make the block lighter or mark it)"
                        if k > 0:
                            error = f"prose check `{block.asserts[k - 1]}` failed: {error}"
                        break
                    if k > 0:
                        page.checks += 1
                seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
                results[block.index] = BlockResult(block.index, block.line, "failed" if error else "passed",
                                                   seconds, cpu_s, error)
                if error:
                    break
    page.wall_s = time.perf_counter() - start
    return page


def summary_table(pages: list[PageResult]) -> str:
    """Per page: blocks total / run / passed / marked, prose checks, wall time; then the heavy blocks."""
    rows = [f"{'page':<22} {'total':>5} {'run':>4} {'passed':>6} {'marked':>6} {'checks':>6} {'wall s':>7}"]
    for p in pages:
        rows.append(f"{p.page:<22} {p.total:>5} {p.run:>4} {p.passed:>6} {p.marked:>6} {p.checks:>6} {p.wall_s:>7.1f}")
    t = [sum(getattr(p, a) for p in pages) for a in ("total", "run", "passed", "marked", "checks")]
    rows.append(f"{'all':<22} {t[0]:>5} {t[1]:>4} {t[2]:>6} {t[3]:>6} {t[4]:>6} "
                f"{sum(p.wall_s for p in pages):>7.1f}")
    heavy = [(p.page, b) for p in pages for b in p.blocks if b.seconds >= HEAVY_S]
    if heavy:
        rows.append("blocks over %.0f s (wall / CPU): " % HEAVY_S
                    + ", ".join(f"{n} #{b.index} {b.seconds:.0f} s / {b.cpu_s:.0f} s" for n, b in heavy))
    return "\n".join(rows)


def write_report(pages: list[PageResult], path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**asdict(p), "total": p.total, "run": p.run, "passed": p.passed,
                                 "marked": p.marked} for p in pages], indent=1))


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="markdown pages (default: every docs/*.md)")
    parser.add_argument("--timeout", type=float, default=BLOCK_TIMEOUT_S, help="seconds per block")
    parser.add_argument("--report", help="write a JSON report here")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.pages] or sorted(DOCS.glob("*.md"))
    pages = []
    for p in paths:
        result = run_page(p, block_timeout=args.timeout)
        pages.append(result)
        for b in result.blocks:
            print(f"{result.page} block {b.index} (line {b.line}): {b.status}, {b.seconds:.1f} s wall, "
                  f"{b.cpu_s:.1f} s CPU", flush=True)
        if not result.ok:
            print(result.failure_message(), flush=True)
    print(summary_table(pages))
    if args.report:
        write_report(pages, args.report)
    return 0 if all(p.ok for p in pages) else 1


if __name__ == "__main__":
    sys.exit(main())
