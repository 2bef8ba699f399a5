"""``sipe report``: one self-contained HTML results page per run folder.

:func:`collect_run` reads what a run folder holds (metrics, evaluation reports, TensorBoard scalars,
CAM / label folders); :func:`render_report` turns it into HTML with every plot (matplotlib) and
thumbnail embedded as a data URI; :func:`write_report_html` does both and writes the file.
"""

from sipe.report.builder import DEFAULT_NUM_IMAGES, render_report, write_report_html
from sipe.report.collect import STAGES, ReportError, RunContents, collect_run

__all__ = [
    "DEFAULT_NUM_IMAGES",
    "STAGES",
    "ReportError",
    "RunContents",
    "collect_run",
    "render_report",
    "write_report_html",
]
