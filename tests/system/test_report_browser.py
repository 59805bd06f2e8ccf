"""The HTML report opened in a real browser: headless Chromium (Debian's `chromium` package,
which `make test` installs when it is missing) loads reports/index.html from disk, dumps the DOM
it built, takes a screenshot, and its console must stay silent; and the page fits a 1280 px
window: nothing makes it scroll sideways (a wide table scrolls inside its own box).

Chromium's `--enable-logging=stderr` prints every console message (`console.log` as much as
`console.error` and uncaught exceptions) as an `INFO:CONSOLE` line, without its level. The page
holds no script at all, so any console line is a fault, and the test counts them all; a first
test proves the detection catches a deliberate `console.error` and a thrown error.

The width is measured by the browser's own layout: a copy of the page with a probe script added
(the page itself stays script-free) writes `document.documentElement.scrollWidth`, and every
element that reaches past the window outside a table's scroll box, into the DOM that
`--dump-dom` prints. A test proves the probe catches a page wider than the window.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tasks.core.layout import Layout
from tasks.reporting.build import SECTION_IDS
from tests.code.test_report import FIGURES, write_reports
from tests.conftest import REPO_ROOT, run

pytestmark = pytest.mark.slow

WINDOW = (1280, 2400)
# `[pid:tid:date:INFO:CONSOLE:12] "message", source: file:///... (12)`; older builds wrote
# `INFO:CONSOLE(12)`
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d+")
# run after the page has loaded (its images decoded and laid out); the findings go into the DOM
WIDTH_PROBE = """<script>
window.addEventListener("load", () => {
  const reach = (element) => element.getBoundingClientRect().right;
  const wide = [...document.querySelectorAll("body *")]
    .filter((e) => reach(e) > innerWidth + 0.5 && !e.parentElement.closest("div.table"))
    .map((e) => `${e.tagName.toLowerCase()}.${e.className} reaches ${Math.round(reach(e))} px`);
  const boxes = [...document.querySelectorAll("div.table")]
    .map((e) => ({scroll: e.scrollWidth, client: e.clientWidth}));
  document.body.setAttribute("data-layout", JSON.stringify({
    viewport: innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    wide: wide.slice(0, 10),
    boxes,
  }));
});
</script>"""


def chromium() -> str:
    """The chromium executable; a missing browser fails the test with what to do."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: `make test` installs it (Debian's chromium package, "
            "via `make test-tools`), or run `apt-get install chromium`"
        )
    return found


@dataclass(frozen=True)
class Rendering:
    """What the browser made of a page: the DOM after loading, console lines, a screenshot."""

    dom: str
    console: list[str]
    screenshot: Path


def chromium_command(work: Path) -> list[str]:
    """Headless Chromium with a fresh profile under `work` and a WINDOW-sized window."""
    return [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={work / 'profile'}",  # never the user's own profile
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--enable-logging=stderr",
        "--v=0",
    ]


def render(page: Path, work: Path) -> Rendering:
    """Open `page` in headless Chromium twice: once to dump the DOM, once for a screenshot."""
    work.mkdir(parents=True, exist_ok=True)
    screenshot = work / "screenshot.png"
    base = chromium_command(work)
    runs = [
        subprocess.run(
            [*base, *extra, page.as_uri()], capture_output=True, text=True, timeout=120, check=False
        )
        for extra in (["--dump-dom"], [f"--screenshot={screenshot}"])
    ]
    for result in runs:
        assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr}"
    console = [
        line for result in runs for line in result.stderr.splitlines() if CONSOLE_LINE.search(line)
    ]
    return Rendering(runs[0].stdout, console, screenshot)


class LayoutFindings(HTMLParser):
    """The probe's findings: the `data-layout` attribute of the dumped DOM's body, as JSON."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.findings: dict | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        layout = dict(attrs).get("data-layout")
        if tag == "body" and layout:
            self.findings = json.loads(layout)


def measure_width(page: Path, work: Path) -> dict:
    """Chromium's layout of `page` in the WINDOW: ``{"viewport", "scrollWidth", "wide" (what
    reaches past the window outside a table's box), "boxes" (each table box's scroll and client
    width)}``, measured on a copy of the page with WIDTH_PROBE added."""
    work.mkdir(parents=True, exist_ok=True)
    probed = work / "probed.html"
    html = page.read_text(encoding="utf-8")
    assert html.count("</body>") == 1, "the page has no single </body> to add the probe before"
    probed.write_text(html.replace("</body>", WIDTH_PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [*chromium_command(work), "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr}"
    findings = LayoutFindings(result.stdout).findings
    assert findings is not None, "the width probe did not run (no data-layout in the DOM)"
    assert findings["viewport"] == WINDOW[0], findings
    return findings


def assert_fits_the_window(page: Path, work: Path) -> dict:
    """The page scrolls only downwards in a WINDOW-wide browser; the findings."""
    findings = measure_width(page, work)
    assert findings["scrollWidth"] <= WINDOW[0], (
        f"the page is {findings['scrollWidth']} px wide in a {WINDOW[0]} px window: "
        + "; ".join(findings["wide"])
    )
    return findings


class PageStructure(HTMLParser):
    """The section ids (in order) and image sources of a DOM."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(attributes.get("id") or "")
        elif tag == "img":
            self.images.append(attributes.get("src") or "")


def assert_renders_cleanly(page: Path, work: Path) -> PageStructure:
    """The page in the browser: every section in order, images inlined, a silent console, and a
    screenshot that shows something (several colours, not a blank window)."""
    rendering = render(page, work)
    assert rendering.console == [], "the browser console is not silent:\n" + "\n".join(
        rendering.console
    )
    structure = PageStructure(rendering.dom)
    assert structure.sections == list(SECTION_IDS), structure.sections
    assert all(source.startswith("data:image/png;base64,") for source in structure.images)
    with Image.open(io.BytesIO(rendering.screenshot.read_bytes())) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
        assert len(colours) > 50, f"the screenshot looks blank ({len(colours)} colours)"
    return structure


def test_the_console_check_catches_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        "</head><body><p>broken</p>"
        '<script>console.error("deliberate console error");</script>'
        '<script>throw new Error("deliberate uncaught error");</script></body></html>'
    )
    console = render(page, tmp_path / "browser").console
    assert len(console) == 4, console  # two messages, in each of the two loads
    assert sum("deliberate console error" in line for line in console) == 2, console
    assert sum("Uncaught Error: deliberate uncaught error" in line for line in console) == 2


def test_the_width_check_catches_a_page_wider_than_the_window(tmp_path: Path) -> None:
    cells = "".join(f"<td>column_{index}_of_a_wide_table</td>" for index in range(40))
    page = tmp_path / "wide.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"</head><body><table><tr>{cells}</tr></table></body></html>"
    )
    findings = measure_width(page, tmp_path / "browser")
    assert findings["scrollWidth"] > WINDOW[0] and any("td." in e for e in findings["wide"])
    with pytest.raises(AssertionError, match=f"px wide in a {WINDOW[0]} px window: "):
        assert_fits_the_window(page, tmp_path / "browser")
    # the same table in the report's scroll box: the page fits, the box scrolls
    boxed = tmp_path / "boxed.html"
    boxed.write_text(
        page.read_text()
        .replace("<table>", '<div class="table" style="overflow-x: auto"><table>')
        .replace("</table>", "</table></div>")
    )
    findings = assert_fits_the_window(boxed, tmp_path / "browser")
    assert [box["scroll"] > box["client"] for box in findings["boxes"]] == [True]


def test_the_report_renders_in_chromium(tmp_path: Path) -> None:
    layout = write_reports(tmp_path / "repo")
    result = run(
        [sys.executable, "-m", "tasks.report"], layout.root, env={"PYTHONPATH": str(REPO_ROOT)}
    )
    assert "(15 sections," in result.stdout and "incomplete" not in result.stdout, result.stdout
    structure = assert_renders_cleanly(layout.html_report, tmp_path / "browser")
    assert len(structure.images) == len(FIGURES)
    findings = assert_fits_the_window(layout.html_report, tmp_path / "browser")
    # the fixture's trials table (every searched key) is wider than the page: the check above
    # means something only because that table scrolls inside its box
    assert any(box["scroll"] > box["client"] for box in findings["boxes"]), findings["boxes"]


def test_the_pipeline_report_renders_in_chromium(trained_repo: Path, tmp_path: Path) -> None:
    # the page `dvc repro` (and so `make run`) writes from a real run on the digits
    page = Layout(trained_repo).html_report
    assert page.exists(), "dvc repro did not write reports/index.html"
    html = page.read_text()
    assert 'class="note missing"' not in html, "a section of the pipeline's report lacks an input"
    assert_renders_cleanly(page, tmp_path / "browser")
    assert_fits_the_window(page, tmp_path / "browser")
