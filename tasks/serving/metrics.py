"""The service's own Prometheus metrics, served with BentoML's at GET /metrics.

- `sixfold_predictions_total{label}`: predictions served, by predicted label (drift in the mix
  of answers shows here first);
- `sixfold_prediction_confidence`: a histogram of the winning probability (a model meeting
  unfamiliar images grows less confident);
- `sixfold_prediction_log_dropped_total`: prediction log records lost (queue full, full disk).

BentoML serves every worker's metrics through prometheus_client's multiprocess mode, which
prometheus_client chooses when it is imported, from PROMETHEUS_MULTIPROC_DIR. BentoML sets that
variable in each worker before it creates the service, so prometheus_client is imported only
when the metrics are first made, in the worker (`bentoml.metrics`, the wrapper that did this,
is deprecated in BentoML 1.4 in favour of prometheus_client itself).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from tasks.serving.predictions import Predictions

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class ServingMetrics:
    predictions: Any  # prometheus_client.Counter, label `label`
    confidence: Any  # prometheus_client.Histogram
    dropped_log_records: Any  # prometheus_client.Counter

    def observe(self, served: Predictions) -> None:
        for prediction in served.predictions:
            self.predictions.labels(label=prediction.label).inc()
            self.confidence.observe(prediction.confidence)

    def count_dropped(self, records: int) -> None:
        self.dropped_log_records.inc(records)


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The metrics of this process, made once (prometheus_client refuses a second copy)."""
    import prometheus_client  # here, not at import: see the module docstring

    return ServingMetrics(
        predictions=prometheus_client.Counter(
            "sixfold_predictions", "Predictions served, by predicted label", ["label"]
        ),
        confidence=prometheus_client.Histogram(
            "sixfold_prediction_confidence",
            "Probability of the predicted label",
            buckets=CONFIDENCE_BUCKETS,
        ),
        dropped_log_records=prometheus_client.Counter(
            "sixfold_prediction_log_dropped",
            "Prediction log records dropped (queue full or a failed write, e.g. a full disk)",
        ),
    )
