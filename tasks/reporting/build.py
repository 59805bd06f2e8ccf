"""The report's sections in their order, and the page built from them.

The section ids are stable link targets (``index.html#calibration``) and what the browser test
looks for, so they are named here once, in :data:`SECTIONS`, in the order of the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.core.layout import Layout
from tasks.reporting import data_sections, model_sections
from tasks.reporting.html import ABSENT, Section, badge, code, interval, page, percent, text
from tasks.reporting.inputs import SectionInputs, dig, stage_writers

TITLE = "sixfold report"


@dataclass(frozen=True)
class SectionSpec:
    """One section of the page: its stable id, title and the builder of its body."""

    id: str
    title: str
    build: Callable[[SectionInputs], str]


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("data-validation", "Data validation and quarantine", data_sections.data_validation),
    SectionSpec("split-leakage", "Split and leakage", data_sections.split_leakage),
    SectionSpec("augmentation", "Augmentation preview", data_sections.augmentation),
    SectionSpec("tuning", "Hyperparameter search", data_sections.tuning),
    SectionSpec(
        "learning-curves",
        "Learning curves and the train/validation gap",
        data_sections.learning_curves,
    ),
    SectionSpec("metrics", "Test metrics against the baseline", model_sections.metrics),
    SectionSpec("confusion", "Confusion matrix", model_sections.confusion),
    SectionSpec("calibration", "Calibration", model_sections.calibration),
    SectionSpec("explanations", "Explanations", model_sections.explanations),
    SectionSpec("compression", "Compression: ONNX and int8", model_sections.compression),
    SectionSpec("gate", "Promotion gate", model_sections.gate),
)
SECTION_IDS = tuple(spec.id for spec in SECTIONS)


@dataclass(frozen=True)
class RenderedReport:
    """The page's HTML and its sections (each with what it could not show)."""

    html: str
    sections: tuple[Section, ...]

    @property
    def incomplete(self) -> tuple[Section, ...]:
        return tuple(section for section in self.sections if section.missing)


def render_report(layout: Layout) -> RenderedReport:
    """Build the page from the reports under `layout` (whatever of them exists)."""
    writers = stage_writers(layout.root / "dvc.yaml")
    sections = []
    for spec in SECTIONS:
        inputs = SectionInputs(layout, writers)
        body = spec.build(inputs)
        body = "".join(inputs.notes) + body  # what the section could not read, first
        sections.append(Section(spec.id, spec.title, body, tuple(inputs.missing)))
    headline = headline_cards(SectionInputs(layout, writers))
    return RenderedReport(page(TITLE, headline, sections), tuple(sections))


def headline_cards(inputs: SectionInputs) -> str:
    """The top of the page: test accuracy with its interval vs the baseline, gate, served model.

    A figure that no report holds shows as a dash; its section below says what is missing.
    """
    layout = inputs.layout
    metrics = inputs.json(layout.metrics_file) or {}
    evaluation = inputs.json(layout.evaluation_report)
    gate = inputs.json(layout.gate_report) or {}
    compress = inputs.json(layout.compress_report) or {}
    decision, reasons = gate.get("decision"), gate.get("reasons")
    # what is served is the champion's format: after a rejection, not this run's model's
    champion = dig(gate, "champion", "id")
    served = dig(gate, "champion", "served_format") if gate else compress.get("served")
    served_note = (
        compress.get("reason") or ""
        if decision != "rejected"
        else f"the champion {champion}'s format (this run's model was rejected)"
        if champion
        else "nothing: no champion yet"
    )
    cards = [
        (
            f"test accuracy ({model_sections.interval_name(evaluation)})",
            percent(dig(metrics, "test", "accuracy")),
            interval(dig(metrics, "test", "accuracy_ci")),
        ),
        (
            f"baseline: {text(dig(metrics, 'baseline', 'name'))}",
            percent(dig(metrics, "baseline", "accuracy")),
            "same test split, same run",
        ),
        (
            "gate decision",
            badge(decision, decision == "promoted") if decision else ABSENT,
            text(reasons[0]) if isinstance(reasons, list) and reasons else "",
        ),
        ("served model", code(served) if served else ABSENT, text(served_note)),
    ]
    return (
        '<div class="headline">'
        + "".join(
            f'<div class="card"><div class="label">{label}</div>'
            f'<div class="value">{value}</div><div class="detail">{detail}</div></div>'
            for label, value, detail in cards
        )
        + "</div>"
    )
