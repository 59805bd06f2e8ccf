"""HTML building blocks of the report: escaping, numbers, tables, inlined images and the page.

Plain string building rather than a template engine: the page is a dozen tables and figures, and
every value read from a report file goes through :func:`text` (a class label can hold ``<`` or
``&``), which is easier to audit in one function than across a template's autoescape rules.
Every helper returns HTML that is safe to concatenate; only :func:`text` and :func:`number`
turn outside values into HTML.

The page is one self-contained file: the CSS is inline, images are ``data:`` URIs, and there is
no script at all, so it reads the same offline, from a mail attachment or a CI artifact, and a
browser has nothing to complain about on its console (tests/system/test_report_browser.py).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ABSENT = "&mdash;"  # what a table shows for a value no report holds

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  max-width: 1100px; margin: 0 auto; padding: 0 24px 48px; overflow-wrap: break-word; }
h1 { margin: 24px 0 8px; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px;
  margin-top: 40px; } h3 { margin: 20px 0 6px; font-size: 16px; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; font-size: 90%; }
.table { max-width: 100%; overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
tr.highlight td { background: #fff8c5; font-weight: 600; }
figure { margin: 12px 24px 12px 0; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #59636e; }
.note { padding: 6px 12px; border-left: 4px solid; margin: 8px 0; }
.note.missing { border-color: #bf8700; background: #fff8c5; }
.note.bad { border-color: #cf222e; background: #ffebe9; }
.note.good { border-color: #1a7f37; background: #dafbe1; }
.note.info { border-color: #0969da; background: #ddf4ff; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600;
  color: #fff; background: #59636e; white-space: nowrap; } .badge.good { background: #1a7f37; }
.badge.bad { background: #cf222e; }
.provenance { display: flex; flex-wrap: wrap; gap: 4px 24px; list-style: none; padding: 0;
  margin: 0 0 8px; font-size: 14px; color: #59636e; } .provenance b { color: #1f2328; }
.headline { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 20px; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 16px; min-width: 220px;
  max-width: 480px; overflow-wrap: anywhere; }
.card .label { font-size: 13px; color: #59636e; } .card .value { font-size: 22px;
  font-weight: 600; } .card .detail { font-size: 13px; }
.row { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
.row > div { min-width: 0; max-width: 100%; }
nav ol { columns: 2; } nav .incomplete { color: #9a6700; }
"""


def text(value: object) -> str:
    """`value` as escaped HTML text (None as a dash)."""
    return ABSENT if value is None else html.escape(str(value), quote=True)


def is_number(value: object) -> bool:
    """True for a real, finite number (a bool is a yes/no, not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: object, digits: int = 4) -> str:
    """A number to `digits` decimals (integers as they are), yes/no for a bool, else text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if is_number(value):
        return f"{value:.{digits}f}"
    return text(value)


def significant(value: object, digits: int = 4) -> str:
    """A number to `digits` significant digits (a learning rate, a weight decay), else text."""
    return (
        f"{value:.{digits}g}" if is_number(value) and not isinstance(value, int) else number(value)
    )


def counted(count: int, noun: str) -> str:
    """`1 check`, `2 checks`: a count with its noun, plural unless it is one (no -y/-es nouns)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percent(value: object, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage (`0.9963` -> `99.63 %`), else as :func:`number`."""
    return f"{100 * value:.{digits}f}&nbsp;%" if is_number(value) else number(value)


def points(value: object, digits: int = 2) -> str:
    """A difference of two fractions in percentage points, signed (`0.0296` -> `+2.96 points`)."""
    return f"{100 * value:+.{digits}f} points" if is_number(value) else number(value)


def interval(bounds: object) -> str:
    """`[lo, hi]` fractions as a percentage interval, a dash when they are not two numbers."""
    if isinstance(bounds, list | tuple) and len(bounds) == 2 and all(map(is_number, bounds)):
        return f"[{percent(bounds[0])}, {percent(bounds[1])}]"
    return ABSENT


def moment(value: object) -> str:
    """An ISO 8601 time as `2025-01-31 14:05 UTC` (a time without a zone as it is), else text."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value)) if isinstance(value, str) else None
        except ValueError:
            when = None
    if when is None:
        return text(value)
    if when.tzinfo is not None:
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M")


def code(value: object) -> str:
    return f"<code>{text(value)}</code>"


def badge(label: object, good: bool | None = None) -> str:
    """A coloured label: green when `good`, red when not, grey when it says neither."""
    kind = "" if good is None else (" good" if good else " bad")
    return f'<span class="badge{kind}">{text(label)}</span>'


def note(body: str, kind: str = "missing") -> str:
    """A boxed remark; `body` is HTML. Kinds: missing (a report or key absent), bad, good, and
    info (where a section's files come from)."""
    return f'<p class="note {kind}">{body}</p>'


def paragraph(body: str) -> str:
    return f"<p>{body}</p>"


def items(entries: Iterable[str]) -> str:
    """A bulleted list of HTML entries."""
    return "<ul>" + "".join(f"<li>{entry}</li>" for entry in entries) + "</ul>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Collection[int] = (),
    highlight: Collection[int] = (),
) -> str:
    """A table of HTML cells; `headers` are plain text (escaped here).

    Args:
        numeric: indexes of the columns to right-align (figures read best aligned).
        highlight: indexes of the rows to mark (the best trial, the served model).
    """
    head = "".join(f"<th>{text(header)}</th>" for header in headers)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{cell}</td>' if column in numeric else f"<td>{cell}</td>"
            for column, cell in enumerate(row)
        )
        marked = ' class="highlight"' if index in highlight else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    # in a box that scrolls sideways: a table wider than the page (every searched key of the
    # trials) scrolls on its own instead of widening the page (checked at 1280 px in Chromium)
    return (
        f'<div class="table"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def side_by_side(*parts: str) -> str:
    """HTML blocks (tables) next to each other, wrapping on a narrow screen."""
    return '<div class="row">' + "".join(f"<div>{part}</div>" for part in parts) + "</div>"


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of (plain-text name, HTML value) pairs."""
    return table(["", "value"], ([text(name), value] for name, value in pairs))


def png_figure(path: Path, caption: str) -> str | None:
    """`path` as an inlined PNG figure with a plain-text caption; None when it is not a PNG."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{text(caption)}">'
        f"<figcaption>{text(caption)}</figcaption></figure>"
    )


@dataclass(frozen=True)
class Section:
    """One part of the page: a stable `id` (the link target), a title, its HTML body, and the
    messages about what it could not show (a missing report or key)."""

    id: str
    title: str
    body: str
    missing: tuple[str, ...] = ()


def contents(sections: Sequence[Section]) -> str:
    """The table of contents: one link per section, marked when the section lacks an input."""
    entries = []
    for section in sections:
        flag = ' class="incomplete"' if section.missing else ""
        mark = " (incomplete)" if section.missing else ""
        entries.append(f'<li><a href="#{section.id}"{flag}>{text(section.title)}</a>{mark}</li>')
    return f'<nav id="contents"><h2>Contents</h2><ol>{"".join(entries)}</ol></nav>'


def page(title: str, headline: str, sections: Sequence[Section]) -> str:
    """The whole document: the headline, the contents, then every section in order."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # an empty icon: without it a browser asks the server (or the disk) for /favicon.ico
        '<link rel="icon" href="data:,">',
        f"<title>{text(title)}</title><style>{CSS}</style></head><body>",
        f'<header id="headline"><h1>{text(title)}</h1>{headline}</header>',
        contents(sections),
    ]
    for section in sections:
        parts.append(
            f'<section id="{section.id}"><h2>{text(section.title)}</h2>{section.body}</section>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
