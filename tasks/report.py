"""report: gather every stage's reports into one offline HTML page, reports/index.html.

Run on its own with ``python -m tasks.report`` (after the other stages; `make report` runs it).

The page opens with which run it shows (when it was built, the git commit and whether files
differ from it, params.yaml's sha256), the headline (test accuracy with its interval against the
baseline, the gate decision, the served model) and a table of contents, then one section per
hard question, in the pipeline's order: data validation and quarantine, split and leakage,
augmentation, the search (and whether its hard stop cut it short), learning curves and the gap,
test metrics, confusion matrix, calibration, explanations, compression, the promotion gate, the
model registry's history (each accuracy with the test set it was measured on), the served bento
and its validation; then what the flows did after the run, when they have: the latest drift
checks and continual learning's decisions. It is one file with its images inlined (no network,
no script), so it can be mailed or kept as a CI artifact. A missing report does not stop it: its
section says what is missing and which stage writes it, and the stage's last line names the
incomplete sections.

The drift monitor and continual learning write outside DVC, so a check or decision made after
the page was built shows once it is rebuilt: ``make report`` forces the report stage when one is
newer than the page.
"""

from __future__ import annotations

from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.reporting.build import RenderedReport, render_report


def write_report(layout: Layout | None = None) -> RenderedReport:
    """Render the page from the reports under `layout` and write it to reports/index.html."""
    layout = layout or Layout.discover()
    report = render_report(layout)
    path = layout.html_report
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(report.html, encoding="utf-8")
    temporary.replace(path)  # atomic: DVC never sees half a page
    return report


def summary_line(layout: Layout, report: RenderedReport) -> str:
    """`report: reports/index.html (11 sections, 412 KB)`, and the incomplete sections if any."""
    size_kb = len(report.html.encode("utf-8")) / 1024
    line = (
        f"report: {layout.relative(layout.html_report).as_posix()} "
        f"({len(report.sections)} sections, {size_kb:.0f} KB)"
    )
    if report.incomplete:
        line += "; incomplete: " + ", ".join(section.id for section in report.incomplete)
    return line


def main() -> None:
    layout = Layout.discover()
    print(summary_line(layout, write_report(layout)))


if __name__ == "__main__":
    stage_main(main)
