"""explain: why the model decides what it decides, and whether the explanations depend on it.

Run on its own with ``python -m tasks.explain`` (after train).

For a seeded sample of `explain.per_class` correctly classified test images per class and every
misclassified test image (grid rows capped at `explain.max_misclassified`), Captum's Integrated
Gradients, GradientSHAP and LIME (all three: each grid is a declared output) explain the
predicted class; each method's grid goes to `reports/explain/<method>.png`. Then the
randomization check (Adebayo et al. 2018): the same architecture with re-initialised weights must
give different maps on
`explain.sanity_samples` test images (`tasks/explaining/sanity.py` says how it is measured).
`reports/explain/summary.json` records both; when a method fails the check the stage still writes
everything, then exits 1 naming it: a saliency map that ignores the model is not an explanation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tasks.core.config import EXPLAIN_METHODS, Params, load_params_or_exit
from tasks.core.errors import UserError
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import load_split
from tasks.explaining.attributions import ScaledInputModel, attribute, predicted_classes
from tasks.explaining.grids import GridRow, save_grid
from tasks.explaining.sanity import SanityResult, randomization_check, randomized_copy
from tasks.modeling.artifact import load_model

TITLES = {
    "integrated_gradients": "Integrated Gradients",
    "gradient_shap": "GradientSHAP",
    "lime": "LIME",
}


def sample_per_class(
    labels: np.ndarray, eligible: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """Up to `per_class` indices of each class among the `eligible` ones, seeded, class by class."""
    generator = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero((labels == label) & eligible)
        count = min(per_class, len(candidates))
        chosen.append(np.sort(generator.choice(candidates, count, replace=False)))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)


def explain(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """Explain the exported model on test images, run the randomization check, write reports."""
    layout = layout or Layout.discover()
    config, seed = params.explain, params.seed
    network, card = load_model(layout.models_dir)
    preprocessing = card.preprocessing()
    model = ScaledInputModel(network, preprocessing).eval()
    test_x, test_y = load_split("test", layout.packed_dir)
    images = preprocessing.scale(test_x)
    predicted = predicted_classes(model, images, config.internal_batch_size)
    wrong = predicted.numpy() != test_y
    # correct examples apart from the mistakes: the grid shows what the model gets right, then
    # the images it gets wrong (none is shown twice)
    sampled = sample_per_class(test_y, ~wrong, config.per_class, seed)
    shown_wrong = np.flatnonzero(wrong)[: config.max_misclassified]
    rows = np.concatenate([sampled, shown_wrong]).astype(int)
    sanity_count = min(config.sanity_samples, len(test_y))
    sanity = np.sort(np.random.default_rng(seed).choice(len(test_y), sanity_count, replace=False))
    randomized = ScaledInputModel(randomized_copy(card.build_network, seed), preprocessing)

    methods: dict[str, Any] = {}
    for method in EXPLAIN_METHODS:
        started = time.perf_counter()
        maps = attribute(method, model, images[rows], predicted[rows], config, seed)
        grid = [
            GridRow(
                images[index].numpy(),
                attribution,
                card.classes[test_y[index]],
                card.classes[int(predicted[index])],
            )
            for index, attribution in zip(rows, maps, strict=True)
        ]
        save_grid(layout.explain_reports / f"{method}.png", grid, TITLES[method])
        check = randomization_check(
            method, model, randomized, images[sanity], predicted[sanity], config, seed
        )
        methods[method] = {
            "sanity": check.as_json(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    summary = {
        "methods": methods,
        "images": {
            "sampled": len(sampled),
            "misclassified": int(wrong.sum()),
            "misclassified_shown": len(shown_wrong),
        },
        "passed": all(entry["sanity"]["passed"] for entry in methods.values()),
    }
    write_json(layout.explain_reports / "summary.json", summary)
    return summary


def failures(summary: dict[str, Any]) -> list[SanityResult]:
    """The methods whose maps did not change enough when the weights were randomized."""
    return [
        SanityResult(method, entry["sanity"]["correlation"], entry["sanity"]["threshold"])
        for method, entry in summary["methods"].items()
        if not entry["sanity"]["passed"]
    ]


def summary_line(summary: dict[str, Any]) -> str:
    images = summary["images"]
    correlation = max(entry["sanity"]["correlation"] for entry in summary["methods"].values())
    verdict = "passed" if summary["passed"] else "FAILED"
    return (
        f"explain: {len(summary['methods'])} methods on "
        f"{images['sampled'] + images['misclassified_shown']} images "
        f"({images['misclassified']} misclassified); randomization check {verdict} "
        f"(max correlation {correlation:.2f})"
    )


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    summary = explain(params, layout)
    print(summary_line(summary))
    failed = failures(summary)
    if failed:
        raise UserError(
            "randomization check failed: "
            + "; ".join(
                f"{result.method} maps correlate {result.correlation:.2f} (Spearman) with those of "
                f"randomly initialised weights (explain.sanity_max_correlation "
                f"{result.threshold})"
                for result in failed
            )
            + ": its saliency maps do not depend on what the model learned"
        )


if __name__ == "__main__":
    stage_main(main)
