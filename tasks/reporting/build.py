"""The report's sections in their order, and the page built from them.

The section ids are stable link targets (``index.html#calibration``) and what the browser test
looks for, so they are named here once, in :data:`SECTIONS`, in the order of the pipeline and
then of what follows it (the registry, the served bento, drift checks, continual learning).
The page opens with which run it shows (:mod:`tasks.reporting.provenance`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.core.layout import Layout
from tasks.reporting import (
    data_sections,
    deployment_sections,
    maintenance_sections,
    model_sections,
)
from tasks.reporting.html import (
    ABSENT,
    Section,
    badge,
    code,
    counted,
    interval,
    moment,
    page,
    percent,
    text,
)
from tasks.reporting.inputs import SectionInputs, dig, stage_writers
from tasks.reporting.provenance import Provenance, collect

MAX_CHANGED_SHOWN = 5  # uncommitted files named in the header; the count says the rest

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
    SectionSpec("registry", "Model registry: history", deployment_sections.registry_history),
    SectionSpec(
        "served-model", "Served model: the validated bento", deployment_sections.served_model
    ),
    SectionSpec("drift", "Drift checks, after the run", maintenance_sections.drift_checks),
    SectionSpec(
        "continual",
        "Continual learning decisions, after the run",
        maintenance_sections.continual_decisions,
    ),
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


def render_report(layout: Layout, provenance: Provenance | None = None) -> RenderedReport:
    """Build the page from the reports under `layout` (whatever of them exists).

    `provenance`: which run the page shows; by default collected now (time, git, params.yaml).
    """
    writers = stage_writers(layout.root / "dvc.yaml")
    provenance = provenance or collect(layout, writers)
    sections = []
    for spec in SECTIONS:
        inputs = SectionInputs(layout, writers)
        body = spec.build(inputs)
        body = "".join(inputs.notes) + body  # what the section could not read, first
        sections.append(Section(spec.id, spec.title, body, tuple(inputs.missing)))
    headline = provenance_line(provenance) + headline_cards(SectionInputs(layout, writers))
    return RenderedReport(page(TITLE, headline, sections), tuple(sections))


def provenance_line(provenance: Provenance) -> str:
    """Which run the page shows: built when, from which commit (and whether files differ from
    it), with which params.yaml."""
    commit = provenance.commit
    if commit.hash is None:
        source = f"commit unknown ({text(commit.problem)})"
    else:
        source = f"commit {code(commit.hash)}"
        if commit.changed:
            count = len(commit.changed)
            named = ", ".join(commit.changed[:MAX_CHANGED_SHOWN])
            more = f", and {count - MAX_CHANGED_SHOWN} more" if count > MAX_CHANGED_SHOWN else ""
            files = f"{counted(count, 'file')}: {named}{more}"
            source += f" <b>+ uncommitted changes</b> ({text(files)})"
        if commit.problem:
            source += f" ({text(commit.problem)})"
    params = (
        f"params.yaml sha256 {code(provenance.params_sha256)}"
        if provenance.params_sha256
        else "params.yaml could not be read"
    )
    entries = [f"built <b>{moment(provenance.built)}</b>", source, params]
    return (
        '<ul class="provenance" id="provenance">'
        + "".join(f"<li>{entry}</li>" for entry in entries)
        + "</ul>"
    )


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
    # continual learning promotes and re-packages after the run: the bento says what is served
    package = inputs.optional_json(layout.package_report) or {}
    bento_champion = package.get("champion")
    if isinstance(bento_champion, str) and champion and bento_champion != champion:
        served = package.get("served_format")
        served_note = (
            f"the bento serves {bento_champion}; this run's gate left {champion} the champion "
            "(see the registry's history)"
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
