"""The drift tests on seeded samples: each finds a real shift and stays quiet on a sample of the
same distribution; Holm's correction and the effect sizes make one family-wise verdict whose
false-alarm rate stays at its level; drift verdicts in a row are counted before continual
learning; too few records give no verdict; the prediction log is read since a time across
rotated files; the embeddings are the input of the network's head.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.core.config import MonitorConfig, load_params
from tasks.core.layout import Layout
from tasks.monitoring import drift, psi
from tasks.monitoring.drift import Sample, judge
from tasks.monitoring.served import EMBEDDING_FIELD, read_log, served_sample

CONFIG = MonitorConfig()  # the documented defaults: level 0.01, PSI 0.2, confidence drop 0.05
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
    assert drift.ks_test("mean", reference, normal(seed + 10, 100, shift=0.6), 0.01).p_value < 0.001
    assert drift.ks_test("mean", reference, normal(seed + 10, 100), 0.01).p_value > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psi_finds_a_wider_spread_and_not_a_resample(seed: int) -> None:
    reference = normal(seed, 500)
    bins = psi.psi_bins(500, 100, 0.2)
    assert psi.psi(reference, normal(seed + 10, 100, scale=2.0), bins) > 0.2
    assert psi.psi(reference, normal(seed + 10, 100), bins) < 0.2


def test_psi_bins_keep_its_noise_under_the_threshold() -> None:
    assert psi.psi_bins(500, 50, 0.2) == 3
    assert psi.psi_bins(500, 5000, 0.2) == psi.MAX_PSI_BINS
    # 50 records of the reference's own distribution, 200 times: PSI stays under the threshold
    values = [
        psi.psi(normal(0, 500), normal(seed, 50), psi.psi_bins(500, 50, 0.2)) for seed in range(200)
    ]
    assert np.mean(np.array(values) > 0.2) < 0.02


def test_psi_sees_a_new_size_against_a_constant_one() -> None:
    eights = np.full(500, 8.0)
    assert psi.psi(eights, np.full(60, 8.0), 10) == 0.0
    assert psi.psi(eights, np.full(60, 16.0), 10) > 5
    assert drift.ks_test("width", eights, np.full(60, 8.0), 0.01).p_value == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi_square_finds_a_label_shift_and_not_a_resample(seed: int) -> None:
    reference = labels(seed, 300, UNIFORM)
    found = drift.label_test(reference, labels(seed + 10, 200, SKEWED), CLASSES, 0.01)
    assert found.p_value < 0.001
    quiet = drift.label_test(reference, labels(seed + 10, 200, UNIFORM), CLASSES, 0.01)
    assert quiet.p_value > 0.01


def test_a_label_the_reference_never_predicted_counts() -> None:
    reference = labels(0, 300, UNIFORM)
    served = np.concatenate([labels(1, 100, UNIFORM), np.full(40, "cat")])
    assert drift.label_test(reference, served, CLASSES, 0.01).p_value < 0.001


def test_the_confidence_needs_both_a_significant_fall_and_a_large_drop() -> None:
    generator = np.random.default_rng(0)
    reference = np.clip(generator.normal(0.98, 0.01, 300), 0, 1)
    dropped = drift.confidence_test(reference, reference[:100] - 0.08, 0.05, 0.01)
    assert dropped.p_value < 1e-6 and dropped.effect_value == pytest.approx(0.08, abs=0.005)
    assert drift.decide([dropped])[0].drift is True
    # significant, but a drop of 0.02 is under confidence_drop: no drift
    small = drift.confidence_test(reference, reference[:100] - 0.02, 0.05, 0.01)
    assert small.p_value < 1e-6 and drift.decide([small])[0].drift is False
    # higher confidence is no drift (one-sided), nor are equal values
    higher = drift.confidence_test(reference, np.full(100, 0.999), 0.05, 0.01)
    assert higher.p_value > 0.5 and drift.decide([higher])[0].drift is False
    assert drift.confidence_test(np.ones(300), np.ones(100), 0.05, 0.01).p_value == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_finds_moved_embeddings_and_not_a_resample(seed: int) -> None:
    generator = np.random.default_rng(seed)
    reference = generator.normal(0, 1, (300, 16))
    moved = generator.normal(0.3, 1, (100, 16))  # a third of a std in every dimension
    found = drift.mmd_test(reference, moved, 2000, 500, 0.01, seed)
    assert found.p_value == pytest.approx(1 / 2001)
    quiet = drift.mmd_test(reference, generator.normal(0, 1, (100, 16)), 2000, 500, 0.01, seed)
    assert quiet.p_value > 0.05


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


def test_holm_matches_its_definition() -> None:
    # sorted 0.001, 0.01, 0.02, 0.5: times 4, 3, 2, 1, then the running maximum
    assert drift.holm([0.02, 0.001, 0.5, 0.01]) == pytest.approx([0.04, 0.004, 0.5, 0.03])
    assert drift.holm([0.3, 0.3]) == pytest.approx([0.6, 0.6])
    assert drift.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert drift.holm([]) == []


def test_only_the_adjusted_p_decides() -> None:
    tests = [
        drift.DriftTest(f"t{i}", None, 0.01, p_value=p)
        for i, p in enumerate([0.004, 0.2, 0.3, 0.5])
    ]
    # 0.004 alone would pass 0.01; among four tests Holm makes it 0.016: no drift
    decided = drift.decide(tests)
    assert decided[0].adjusted_p == pytest.approx(0.016) and decided[0].drift is False
    decided = drift.decide([*tests[:1], drift.skipped("mmd:embedding", 0.01, "none")])
    assert decided[0].drift is True and decided[1].drift is None  # a skipped test is no member


def test_a_tiny_shift_in_a_large_sample_is_significant_but_not_drift() -> None:
    reference, served = normal(0, 5000), normal(1, 5000, shift=0.1)
    test = drift.with_psi(drift.ks_test("mean", reference, served, 0.01), reference, served, 0.2)
    (decided,) = drift.decide([test])
    assert decided.significant and decided.effect_value < 0.2 and decided.drift is False
    served = normal(1, 5000, shift=1.0)
    test = drift.with_psi(drift.ks_test("mean", reference, served, 0.01), reference, served, 0.2)
    assert drift.decide([test])[0].drift is True


def test_the_verdict_is_drift_when_any_test_drifts() -> None:
    reference = sample(0, 500)
    quiet = judge(reference, sample(1, 120), CLASSES, CONFIG, seed=0)
    assert quiet.drift is False and quiet.reason.startswith("no drift: 8 test(s) on 120 records")
    assert all(test.drift is False and test.adjusted_p >= test.p_value for test in quiet.tests)
    shifted = judge(reference, sample(1, 120, shift=1.0), CLASSES, CONFIG, seed=0)
    assert shifted.drift is True
    drifted = {test.name for test in shifted.tests if test.drift}
    assert {"ks:mean", "mannwhitney:confidence", "mmd:embedding"} <= drifted
    assert "ks:std" not in drifted and "ks:width" not in drifted
    assert "ks:mean (p " in shifted.reason and ", psi " in shifted.reason
    relabelled = judge(reference, sample(1, 120, shares=SKEWED), CLASSES, CONFIG, seed=0)
    relabelled_drift = {test.name for test in relabelled.tests if test.drift}
    assert "chi2:predicted_label" in relabelled_drift
    assert relabelled_drift <= {"chi2:predicted_label", "fisher:class_share"}
    (entry,) = [t.as_json() for t in shifted.tests if t.name == "ks:mean"]
    assert {"p_value", "adjusted_p", "effect", "effect_value", "effect_threshold"} <= set(entry)


def test_clean_samples_alarm_at_most_at_the_level() -> None:
    # 200 seeded clean checks of the cheap tests (no MMD): Holm keeps the family-wise rate at
    # or below 0.01, so more than 4 alarms (2 %) would be a broken correction (binomial
    # chance of > 4 alarms at 0.01: about 5 %, and Holm is conservative here)
    reference = sample(0, 500)
    alarms = 0
    for seed in range(1, 201):
        served = sample(seed, 50)
        blind = Sample(served.features, served.labels, served.confidences, None)
        alarms += bool(judge(reference, blind, CLASSES, CONFIG, seed=0).drift)
    assert alarms <= 4


def test_too_few_records_give_no_verdict() -> None:
    verdict = judge(sample(0, 500), sample(1, 49, shift=3.0), CLASSES, CONFIG, seed=0)
    assert verdict.drift is None and verdict.tests == []
    assert "49 record(s), fewer than monitor.min_records = 50" in verdict.reason


def test_model_tests_are_skipped_without_champion_records_or_embeddings() -> None:
    served = sample(1, 100)
    few = Sample(served.features, served.labels[:10], served.confidences[:10], None)
    verdict = judge(sample(0, 500), few, CLASSES, CONFIG, seed=0)
    skipped = {test.name: test.note for test in verdict.tests if test.drift is None}
    assert set(skipped) == {
        "chi2:predicted_label",
        "fisher:class_share",
        "mannwhitney:confidence",
        "mmd:embedding",
    }
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


def test_continual_learning_waits_for_consecutive_drift_verdicts() -> None:
    from tasks.monitoring.state import MonitorState, decide_continual

    def run(verdicts: list[bool | None], needed: int = 2) -> list[tuple[int, bool]]:
        state, seen = MonitorState(champion="c1"), []
        for verdict in verdicts:
            count, decision = decide_continual(state, verdict, "c1", needed)
            seen.append((decision.drift_in_a_row, decision.start))
            state = MonitorState(champion="c1", drift_in_a_row=count)
        return seen

    # drift, drift: the second starts it and the count begins again
    assert run([True, True, True]) == [(1, False), (2, True), (1, False)]
    # a no-drift verdict resets; a check without a verdict neither counts nor resets
    assert run([True, False, True, None, True]) == [
        (1, False),
        (0, False),
        (1, False),
        (1, False),
        (2, True),
    ]
    assert run([True], needed=1) == [(1, True)]
    _, first = decide_continual(MonitorState(champion="c1"), True, "c1", 2)
    assert first.message == "drift 1 of 2 in a row: continual learning not started yet"
    # drift verdicts about another champion do not count for the new one
    count, decision = decide_continual(MonitorState(None, None, "old", 1), True, "new", 2)
    assert (count, decision.start) == (1, False)


def test_the_state_is_written_whole_and_read_back(tmp_path: Path) -> None:
    from tasks.monitoring.state import MonitorState, read_state, state_lock, write_state

    assert read_state(tmp_path) == MonitorState()
    state = MonitorState("2026-01-01T00:00:00+00:00", "a.json", "c1", 1)
    with state_lock(tmp_path):
        write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    written = sorted(path.name for path in (tmp_path / "monitor").iterdir())
    assert written == [".state.lock", "state.json"]  # no temporary file left behind
    # a state written before the count existed reads as a count of 0
    (tmp_path / "monitor" / "state.json").write_text('{"until": "x", "report": "r.json"}')
    assert read_state(tmp_path) == MonitorState("x", "r.json", None, 0)


def test_a_verdict_on_no_record_of_the_champion_warns(tmp_path: Path) -> None:
    from tasks.monitoring.report import ModelSummary, build_report
    from tasks.monitoring.served import read_log
    from tasks.monitoring.state import MonitorState, decide_continual

    start = datetime(2026, 1, 1, tzinfo=UTC)
    (tmp_path / "predictions-1.jsonl").write_text(
        "".join(_record(start + timedelta(seconds=i), version="old") for i in range(3))
    )
    log = read_log(tmp_path, None)
    _, continual = decide_continual(MonitorState(), False, "new", 2)
    verdict = drift.Verdict(False, [], "no drift: 4 test(s) on 3 records")
    report = build_report(verdict, log, ModelSummary("new", 270, 270), continual, {}, None)
    (warning,) = report["warnings"]
    assert warning.startswith(
        "warning: none of the 3 judged record(s) were served by the champion new"
    )
    assert "\n" not in warning and "old (3)" in warning
    served = build_report(verdict, log, ModelSummary("old", 270, 270), continual, {}, None)
    assert served["warnings"] == []


def test_the_reference_is_the_champions_test_images_only(tmp_path: Path) -> None:
    import pandas as pd

    from tasks.monitoring.reference import build_reference
    from tasks.registry.store import champion, load_test_set
    from tests.code.test_serving import make_champion

    make_champion(tmp_path, seed=0, export=True)
    layout = Layout(tmp_path)
    test_images, _ = load_test_set(champion(layout.registry_dir).test_set)
    splits = {"train": 20, "val": 7, "test": len(test_images)}
    rows = [
        {"path": f"{split}/{index}.png", "label": "a", "group": "", "split": split}
        for split, count in splits.items()
        for index in range(count)
    ]
    layout.split_file.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(layout.split_file, index=False)
    # every split has statistics of its own: train's means are 0-19, val's 100-106, test's 200+
    offsets = {"train": 0, "val": 100, "test": 200}
    manifest = pd.DataFrame(
        {
            "path": [row["path"] for row in rows],
            "mean": [offsets[row["split"]] + int(row["path"].split("/")[1][:-4]) for row in rows],
            "std": 50.0,
            "width": 8,
            "height": 8,
        }
    )
    layout.validated_manifest.parent.mkdir(parents=True)
    manifest.to_csv(layout.validated_manifest, index=False)
    layout.packed_dir.mkdir(parents=True)
    np.save(layout.packed_dir / "test_x.npy", test_images)

    reference = build_reference(layout)
    assert reference.test_images == reference.statistics_images == len(test_images)
    assert sorted(reference.sample.features["mean"]) == [200 + i for i in range(len(test_images))]
    assert len(reference.sample.labels) == len(test_images) and reference.note == ""
    # the packed test split is no longer the champion's registered one: no image statistics
    np.save(layout.packed_dir / "test_x.npy", 255 - test_images)
    resplit = build_reference(layout)
    assert resplit.sample.features == {} and resplit.statistics_images == 0
    assert "not the current test split" in resplit.note
    assert len(resplit.sample.confidences) == len(test_images)  # the model side still holds


def test_one_vanished_class_is_found_by_its_own_share_not_by_chi_square() -> None:
    """Ten classes, 270 reference and 200 served labels with one class gone: chi-square over
    nine degrees of freedom cannot tell at a 1 % level; the class's own Fisher test can."""
    generator = np.random.default_rng(3)
    reference = np.array(CLASSES * 27)
    served = generator.choice([c for c in CLASSES if c != "7"], 200)
    chi2 = drift.label_test(reference, served, CLASSES, 0.01)
    share = drift.class_share_test(reference, served, CLASSES, 0.01)
    assert chi2.p_value > 0.001
    assert share.p_value < 1e-4 and share.note.startswith("largest shift 7: 0.100 -> 0.000")
    same = drift.class_share_test(reference, generator.choice(reference, 200), CLASSES, 0.01)
    assert same.p_value > 0.01
