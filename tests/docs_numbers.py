"""Numbers in the docs that come from result files: check them, or write them in.

``python tests/docs_numbers.py`` checks; ``--write`` copies them into the pages. Each entry names a page, the result
file, and the table (by its header line) that must be identical in both. ``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (page, result file, first line of the table shared by both)
GENERATED_TABLES = [
    ("docs/benchmarks.md", "benchmarks/RESULTS.md",
     "| model | measurement | baseline | tv_lens | tv_lens ratio | TransformerBridge ratio | nnsight ratio | note |"),
    ("docs/patching.md", "benchmarks/results/patching.md",
     "| method | seconds for the grid | × the exact grid's time | note |"),
    ("docs/patching.md", "benchmarks/results/patching_pairs.md",
     "| what | seconds | × FLOP floor | × floor + unpatched forwards | note |"),
]


_DELIMITER_ROW = re.compile(r"^\s*\|[\s:|-]+\|\s*$")


def _cells(line: str) -> int:
    """Cell borders of a table row as Python-Markdown splits it: pipes in code spans and ``\\|`` do not count."""
    return re.sub(r"`[^`]*`", "``", line.strip()).replace("\\|", "").count("|")


def table_problems(text: str) -> list[str]:
    """Rows of markdown tables with another number of cells than their header (an unescaped ``|`` in a cell, such
    as ``max |diff|``, shifts every later cell of the row)."""
    lines, problems, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and lines[i].lstrip().startswith("|") and i + 1 < len(lines) \
                and _DELIMITER_ROW.match(lines[i + 1]):
            width, j = _cells(lines[i]), i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                if _cells(lines[j]) != width:
                    problems.append(f"line {j + 1}: {_cells(lines[j]) - 1} cells, header has {width - 1}")
                j += 1
            i = j
            continue
        i += 1
    return problems


def table_span(lines: list[str], header: str) -> tuple[int, int]:
    """(start, end) line indices of the markdown table whose first line is ``header``."""
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == header)
    except StopIteration:
        raise ValueError(f"no table with header {header!r}") from None
    end = start
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    return start, end


def stale(root: Path = ROOT) -> list[str]:
    """Pages whose generated tables differ from their result files (empty when all agree)."""
    problems = []
    for page, source, header in GENERATED_TABLES:
        page_lines = (root / page).read_text().splitlines()
        source_lines = (root / source).read_text().splitlines()
        try:
            a, b = table_span(page_lines, header)
            c, d = table_span(source_lines, header)
        except ValueError as exc:
            problems.append(f"{page} / {source}: {exc}")
            continue
        if page_lines[a:b] != source_lines[c:d]:
            problems.append(f"{page}: the table `{header[:40]}...` differs from {source}; "
                            f"run `python tests/docs_numbers.py --write`")
    return problems


def write(root: Path = ROOT) -> None:
    for page, source, header in GENERATED_TABLES:
        path = root / page
        page_lines = path.read_text().splitlines()
        source_lines = (root / source).read_text().splitlines()
        a, b = table_span(page_lines, header)
        c, d = table_span(source_lines, header)
        path.write_text("\n".join(page_lines[:a] + source_lines[c:d] + page_lines[b:]) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="copy the numbers from the result files into the pages")
    args = parser.parse_args(argv)
    if args.write:
        write()
    problems = stale()
    print("\n".join(problems) or "docs numbers match their result files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
