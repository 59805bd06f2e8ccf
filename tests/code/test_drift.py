"""The drift tests on seeded samples: each finds a real shift and stays quiet on a sample of the
same distribution; too few records give no verdict; the prediction log is read since a time
across rotated files; the embeddings are the input of the network's head.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.core.config import load_params
from tasks.core.config_release import MonitorConfig
from tasks.core.layout import Layout
from tasks.monitoring import drift
from tasks.monitoring.drift import Sample, judge
from tasks.monitoring.served import EMBEDDING_FIELD, read_log, served_sample

CONFIG = MonitorConfig()  # the documented defaults: p 0.01, PSI 0.2, confidence drop 0.05
CLASSES = [str(digit) for digit in range(10)]


def normal(seed: int, size: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size)


def labels(seed: int, size: int, shares: list[float]) -> np.ndarray:
    return np.random.default_rng(seed).choice(CLASSES, size, p=shares)


UNIFORM = [0.1] * 10
SKEWED = [0.28, *[0.08] * 9]  # class 0 predicted far more often (a shift a model would show)


def sample(seed: int, size: int, shift: float = 0.0, shares: list[float] = UNIFORM) -> Sample:
    """Digit-like image statistics, labels, confidences and 16-d embeddings; `shift` moves the
    pixel mean (in its std), the embeddings (per dimension) and lowers the confidence."""
    generator = np.random.default_rng(seed)
    return Sample(
        features={
            "mean": generator.normal(75 + 15 * shift, 15, size),
            "std": generator.normal(85, 8, size),
            "width": np.full(size, 8.0),
            "height": np.full(size, 8.0),
        },
        labels=generator.choice(CLASSES, size, p=shares),
        confidences=np.clip(generator.normal(0.97 - 0.1 * shift, 0.03, size), 0, 1),
        embeddings=generator.normal(0.5 * shift, 1.0, (size, 16)),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_finds_a_shifted_mean_and_not_a_resample(seed: int) -> None:
    reference = normal(seed, 500)
    assert drift.ks_test("mean", reference, normal(seed + 10, 100, shift=0.6), 0.01).drift
    quiet = drift.ks_test("mean", reference, normal(seed + 10, 100), 0.01)
    assert quiet.drift is False and quiet.p_value > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psi_finds_a_wider_spread_and_not_a_resample(seed: int) -> None:
    reference = normal(seed, 500)
    assert drift.psi_test("std", reference, normal(seed + 10, 100, scale=2.0), 0.2).drift
    quiet = drift.psi_test("std", reference, normal(seed + 10, 100), 0.2)
    assert quiet.drift is False and quiet.value < 0.2


def test_psi_bins_keep_its_noise_under_the_threshold() -> None:
    assert drift.psi_bins(500, 50, 0.2) == 3
    assert drift.psi_bins(500, 5000, 0.2) == drift.MAX_PSI_BINS
    # 50 records of the reference's own distribution, 200 times: PSI stays under the threshold
    values = [
        drift.psi(normal(0, 500), normal(seed, 50), drift.psi_bins(500, 50, 0.2))
        for seed in range(200)
    ]
    assert np.mean(np.array(values) > 0.2) < 0.02


def test_psi_sees_a_new_size_against_a_constant_one() -> None:
    eights = np.full(500, 8.0)
    assert drift.psi(eights, np.full(60, 8.0), 10) == 0.0
    assert drift.psi(eights, np.full(60, 16.0), 10) > 5
    assert drift.ks_test("width", eights, np.full(60, 8.0), 0.01).drift is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi_square_finds_a_label_shift_and_not_a_resample(seed: int) -> None:
    reference = labels(seed, 300, UNIFORM)
    assert drift.label_test(reference, labels(seed + 10, 200, SKEWED), CLASSES, 0.01).drift
    quiet = drift.label_test(reference, labels(seed + 10, 200, UNIFORM), CLASSES, 0.01)
    assert quiet.drift is False and quiet.p_value > 0.01


def test_a_label_the_reference_never_predicted_counts() -> None:
    reference = labels(0, 300, UNIFORM)
    served = np.concatenate([labels(1, 100, UNIFORM), np.full(40, "cat")])
    assert drift.label_test(reference, served, CLASSES, 0.01).drift


def test_the_confidence_drop_is_judged_by_its_threshold() -> None:
    reference = np.full(300, 0.98)
    dropped = drift.confidence_test(reference, np.full(100, 0.90), 0.05)
    assert dropped.drift and dropped.value == pytest.approx(0.08)
    assert drift.confidence_test(reference, np.full(100, 0.96), 0.05).drift is False
    assert drift.confidence_test(reference, np.full(100, 0.999), 0.05).drift is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_finds_moved_embeddings_and_not_a_resample(seed: int) -> None:
    generator = np.random.default_rng(seed)
    reference = generator.normal(0, 1, (300, 16))
    moved = generator.normal(0.3, 1, (100, 16))  # a third of a std in every dimension
    found = drift.mmd_test(reference, moved, 200, 500, 0.01, seed)
    assert found.drift and found.p_value == pytest.approx(1 / 201)
    quiet = drift.mmd_test(reference, generator.normal(0, 1, (100, 16)), 200, 500, 0.01, seed)
    assert quiet.drift is False and quiet.p_value > 0.05


def test_mmd_is_seeded_and_subsamples_to_its_limit() -> None:
    reference, served = normal(0, 3200).reshape(400, 8), normal(1, 1600).reshape(200, 8)
    first = drift.mmd_test(reference, served, 100, 150, 0.01, seed=7)
    again = drift.mmd_test(reference, served, 100, 150, 0.01, seed=7)
    assert first == again
    assert (first.reference, first.served) == (150, 150)


def test_mmd_equals_the_plain_formula() -> None:
    x, y = normal(0, 120).reshape(30, 4), normal(1, 80, shift=0.5).reshape(20, 4)
    pooled = np.concatenate([x, y])
    squared = ((pooled[:, None] - pooled[None]) ** 2).sum(axis=2)
    kernel = np.exp(-squared / (2 * np.median(squared[~np.eye(50, dtype=bool)])))
    kxx, kyy, kxy = kernel[:30, :30], kernel[30:, 30:], kernel[:30, 30:]
    plain = (kxx.sum() - 30) / (30 * 29) + (kyy.sum() - 20) / (20 * 19) - 2 * kxy.mean()
    assert drift.mmd_test(x, y, 10, 100, 0.01, 0).statistic == pytest.approx(plain, abs=1e-6)


def test_the_verdict_is_drift_when_any_test_says_so() -> None:
    reference = sample(0, 500)
    quiet = judge(reference, sample(1, 120), CLASSES, CONFIG, seed=0)
    assert quiet.drift is False and quiet.reason.startswith("no drift: 11 test(s)")
    assert all(test.drift is False for test in quiet.tests)
    shifted = judge(reference, sample(1, 120, shift=1.0), CLASSES, CONFIG, seed=0)
    assert shifted.drift is True
    drifted = {test.name for test in shifted.tests if test.drift}
    assert {"ks:mean", "confidence_drop", "mmd:embedding"} <= drifted
    assert "ks:std" not in drifted and "ks:width" not in drifted
    relabelled = judge(reference, sample(1, 120, shares=SKEWED), CLASSES, CONFIG, seed=0)
    assert {test.name for test in relabelled.tests if test.drift} == {"chi2:predicted_label"}


def test_too_few_records_give_no_verdict() -> None:
    verdict = judge(sample(0, 500), sample(1, 49, shift=3.0), CLASSES, CONFIG, seed=0)
    assert verdict.drift is None and verdict.tests == []
    assert "49 record(s), fewer than monitor.min_records = 50" in verdict.reason


def test_model_tests_are_skipped_without_champion_records_or_embeddings() -> None:
    served = sample(1, 100)
    few = Sample(served.features, served.labels[:10], served.confidences[:10], None)
    verdict = judge(sample(0, 500), few, CLASSES, CONFIG, seed=0)
    skipped = {test.name: test.note for test in verdict.tests if test.drift is None}
    assert set(skipped) == {"chi2:predicted_label", "confidence_drop", "mmd:embedding"}
    assert verdict.drift is False  # the image statistics were judged
    blind = Sample(served.features, served.labels, served.confidences, None)
    (mmd,) = [t for t in judge(sample(0, 500), blind, CLASSES, CONFIG, 0).tests if "mmd" in t.name]
    assert mmd.drift is None and mmd.note == "the prediction log records no embeddings"
    assert "p_value" not in mmd.as_json() and mmd.as_json()["drift"] is None


def _record(moment: datetime, version: str = "champ", label: str = "3", **extra) -> str:
    record = {
        "time": moment.isoformat(timespec="milliseconds"),
        "model_version": version,
        "label": label,
        "confidence": 0.9,
        "width": 8,
        "height": 8,
        "channels": 1,
        "mean": 70.0,
        "std": 80.0,
        **extra,
    }
    return json.dumps(record) + "\n"


def test_the_log_is_read_since_a_time_across_rotated_files(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    at = [start + timedelta(seconds=second) for second in range(6)]
    (tmp_path / "predictions-1.jsonl.1").write_text(_record(at[0]) + _record(at[2]))
    (tmp_path / "predictions-1.jsonl").write_text(
        _record(at[3], embedding=[0.5, 1.5]) + '{"time": "2026-01-01T00:00:04', encoding="utf-8"
    )
    (tmp_path / "predictions-2.jsonl").write_text(_record(at[1], version="old") + _record(at[5]))
    (tmp_path / "notes.jsonl").write_text(_record(at[4]))  # not a worker's log
    log = read_log(tmp_path, since=at[1])
    assert [record.time for record in log.records] == [at[2], at[3], at[5]]
    assert log.until == at[5] and log.files == 3 and log.unreadable == 1
    everything = read_log(tmp_path, since=None)
    assert len(everything.records) == 5 and everything.versions == {"champ": 4, "old": 1}
    served = served_sample(everything, "champ")
    assert served.size == 5 and len(served.labels) == 4  # image statistics of every record
    assert served.embeddings.tolist() == [[0.5, 1.5]]
    assert read_log(tmp_path / "missing", None).records == []


def test_a_check_with_too_few_records_writes_a_report_and_keeps_the_state(tmp_path: Path) -> None:
    from tasks.monitoring.run import check_drift, parse_arguments

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    logs = tmp_path / "logs" / "predictions"
    logs.mkdir(parents=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [_record(start + timedelta(seconds=i), **{EMBEDDING_FIELD: [0.0]}) for i in range(3)]
    (logs / "predictions-1.jsonl").write_text("".join(lines))
    layout = Layout(tmp_path)
    report, payload = check_drift(layout, load_params(layout.params_file), now=start)
    assert report == layout.reports_dir / "monitor" / "2026-01-01T000000Z.json"
    assert json.loads(report.read_text()) == payload
    assert payload["drift"] is None and payload["status"] == "no verdict"
    assert payload["records"] == 3 and payload["plot"] is None
    assert not (tmp_path / "reports" / "monitor" / "state.json").exists()
    assert parse_arguments(["--since=2026-01-01T00:00:00", "--report", "r.json"]) == (
        start,
        Path("r.json").resolve(),
    )
    with pytest.raises(SystemExit) as stopped:
        parse_arguments(["--since", "yesterday"])
    assert stopped.value.code == 2


@pytest.mark.parametrize("arch, dimensions", [("cnn", 16), ("resnet18", 512)])
def test_the_embedding_is_the_input_of_the_head(arch: str, dimensions: int) -> None:
    import torch

    from tasks.modeling.artifact import predict
    from tasks.modeling.embedding import embed, head_name
    from tests.models import tiny_card

    card = tiny_card(CLASSES, 16, "test").model_copy(update={"arch": arch})
    torch.manual_seed(0)
    network = card.build_network().eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 16, 16), dtype=np.uint8)
    embeddings, probabilities = embed(network, card.preprocessing(), images)
    assert embeddings.shape == (5, dimensions)
    expected = predict(network, card.preprocessing(), images)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    head = network.get_submodule(head_name(network))
    np.testing.assert_allclose(
        torch.softmax(head(torch.from_numpy(embeddings)), 1).detach().numpy(), expected, atol=1e-5
    )
    # what the head receives, caught by a hook on the network itself
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, inputs: caught.append(inputs[0]))
    with torch.no_grad():
        network(card.preprocessing()(images))
    hook.remove()
    np.testing.assert_allclose(embeddings, caught[0].flatten(1).numpy(), atol=1e-6)
    assert isinstance(head[-1], torch.nn.Linear)  # the network keeps its head


def test_the_embedding_network_shares_the_weights_of_the_network() -> None:
    import torch

    from tasks.modeling.embedding import EmbeddingNetwork
    from tests.models import tiny_card, tiny_network

    card = tiny_card(CLASSES, 16, "test")
    network = tiny_network(card, seed=0)
    split = EmbeddingNetwork(network).eval()
    with torch.no_grad():
        next(network.parameters()).mul_(2.0)  # a change to the network shows in the copy
        logits, _ = split(card.preprocessing()(np.zeros((2, 1, 16, 16), np.uint8)))
        np.testing.assert_allclose(
            logits.numpy(), network(card.preprocessing()(np.zeros((2, 1, 16, 16), np.uint8)))
        )


def test_embeddings_of_another_size_are_not_compared() -> None:
    served = sample(1, 100)
    wider = Sample(served.features, served.labels, served.confidences, np.zeros((100, 32)))
    tests = judge(sample(0, 500), wider, CLASSES, CONFIG, seed=0).tests
    (mmd,) = [test for test in tests if test.name == "mmd:embedding"]
    assert mmd.drift is None and "32 dimensions, the champion's 16" in mmd.note
