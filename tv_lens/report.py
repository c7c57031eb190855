"""The demo's report, now :mod:`tv_lens.demo.report` (one self-contained HTML page from results, never a model).

This name stays so that ``from tv_lens import report`` keeps working.
"""

from .demo.report import CSS, GALLERY_PER_TASK, diff_html, findings, gallery_html, table_html, write_report

__all__ = ["CSS", "GALLERY_PER_TASK", "diff_html", "findings", "gallery_html", "table_html", "write_report"]
