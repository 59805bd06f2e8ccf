"""Following the champion without a server: the swap (`tasks.serving.following`), the monitor's
"served model is not the champion", and the BentoML home of a temporary server.

The service behind a real `bentoml serve`, swapping while requests run, is
tests/system/test_serve_follows_champion.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.core.config import load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.monitoring.served import read_log, served_model_problem
from tasks.packaging.server import private_bentoml_home
from tasks.registry.store import REGISTRY_FILE
from tasks.serving.following import (
    DEFAULT_RELOAD_S,
    GENERATION_START_LIMIT,
    RELOAD_VARIABLE,
    Adopter,
    FollowPolicy,
    Holder,
    ModelChanged,
    StoreFollower,
    first_generation,
    generation_of,
    on_one_model,
    reload_interval,
    split_generation,
    with_generation,
)
from tasks.serving.model_status import ChampionWatch, ModelStatus
from tests.conftest import REPO_ROOT

# ------------------------------------------------------------------ settings and policy


def test_the_reload_interval_defaults_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RELOAD_VARIABLE, raising=False)
    assert reload_interval() == DEFAULT_RELOAD_S
    monkeypatch.setenv(RELOAD_VARIABLE, "0.5")
    assert reload_interval() == 0.5
    for wrong in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv(RELOAD_VARIABLE, wrong)
        with pytest.raises(UserError, match=f"{RELOAD_VARIABLE} must be a number of seconds > 0"):
            reload_interval()


def test_a_pinned_model_or_a_bento_is_not_followed_and_says_why() -> None:
    follows = FollowPolicy.of(None, None, 2.0)
    assert follows.follows and "every 2 s" in follows.reason
    pinned = FollowPolicy.of("sixfold-classifier:abc", None, 2.0)
    assert not pinned.follows and "pinned to sixfold-classifier:abc" in pinned.reason
    assert "SIXFOLD_MODEL_TAG" in pinned.reason
    bento = FollowPolicy.of(None, "sixfold-classifier:xyz", 2.0)
    assert not bento.follows and "the bento sixfold-classifier:xyz" in bento.reason


# ------------------------------------------------------------------ the swap


def test_a_swap_gives_the_next_request_the_new_model_and_leaves_a_taken_one_alone() -> None:
    holder = Holder("v1", "model-1", generation=10)
    taken = holder.current  # a request in flight
    installed = holder.install("v2", "model-2")
    assert installed.generation == 11 and holder.current is installed
    assert (taken.version, taken.model, taken.generation) == ("v1", "model-1", 10)
    assert holder.generations == {10: "v1", 11: "v2"}


def test_readers_never_see_half_a_swap() -> None:
    """Threads taking the model while another swaps it a thousand times: every snapshot's
    version is its model's own (the reference is replaced whole, never mutated)."""
    holder = Holder("0", ("0", np.zeros(3)), generation=0)
    mismatches: list[tuple[str, str]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            loaded = holder.current
            if loaded.model[0] != loaded.version or holder.generations[loaded.generation] != (
                loaded.version
            ):
                mismatches.append((loaded.version, loaded.model[0]))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for number in range(1, 1001):
        holder.install(str(number), (str(number), np.full(3, number)))
    done.set()
    for reader in readers:
        reader.join()
    assert mismatches == [] and holder.current.version == "1000"


def test_the_follower_installs_a_new_latest_once_fully_loaded() -> None:
    latest = {"version": "v1"}
    loads: list[str] = []

    def load(version: str) -> str:
        loads.append(version)
        return f"model-{version}"

    holder = Holder("v1", "model-v1", generation=5)
    follower = StoreFollower(holder, lambda: latest["version"], load)
    assert asyncio.run(follower.check()) is None and loads == []  # nothing new: nothing loaded
    latest["version"] = "v2"
    installed = asyncio.run(follower.check())
    assert installed is not None and (installed.version, installed.generation) == ("v2", 6)
    assert holder.current.model == "model-v2" and loads == ["v2"]
    latest["version"] = None  # a store being written: no answer this time
    assert asyncio.run(follower.check()) is None and holder.current.version == "v2"


def test_a_model_that_fails_to_load_leaves_the_old_one_serving_and_is_not_retried() -> None:
    attempts: list[str] = []

    def load(version: str) -> str:
        attempts.append(version)
        raise OSError(f"{version}/model.onnx is corrupt")

    holder = Holder("v1", "model-v1", generation=0)
    follower = StoreFollower(holder, lambda: "broken", load)
    assert asyncio.run(follower.check()) is None
    assert asyncio.run(follower.check()) is None
    assert holder.current.version == "v1" and attempts == ["broken"]
    assert "corrupt" in follower.broken["broken"]


class Inference:
    """Stands for the inference process's generation table (what its API answers)."""

    def __init__(self, table: dict[int, str]) -> None:
        self.table = table
        self.asked = 0

    async def generations(self) -> dict[int, str]:
        self.asked += 1
        await asyncio.sleep(0)  # a real call yields to the loop
        return dict(self.table)


def test_the_front_takes_up_the_model_that_answered_loading_it_once() -> None:
    inference = Inference({7: "v1", 8: "v2"})
    loads: list[str] = []

    def load(version: str) -> str:
        loads.append(version)
        return f"front-{version}"

    adopter = Adopter("v1", "front-v1", load, inference.generations)
    assert adopter.current.generation is None  # unknown until the first answer

    async def scenario() -> None:
        first = await adopter.adopt(7)  # the same model: nothing loaded, the number learnt
        assert (first.version, first.generation, loads) == ("v1", 7, [])
        # many requests see generation 8 at once: one load
        swapped = await asyncio.gather(*(adopter.adopt(8) for _ in range(5)))
        assert {loaded.model for loaded in swapped} == {"front-v2"} and loads == ["v2"]
        back = await adopter.adopt(7)  # a request that ran on the previous model: kept
        assert back.model == "front-v1" and loads == ["v2"]
        with pytest.raises(ModelChanged):
            await adopter.adopt(99)
        newest = await adopter.check()
        assert (newest.version, newest.generation) == ("v2", 8)

    asyncio.run(scenario())


def test_a_front_model_that_fails_to_load_is_refused_once_and_the_old_one_answers() -> None:
    """A new version whose card or weights the front cannot load: the request gets None (503
    in the service, never a 500), the load is not tried again, the old model stays current."""
    inference = Inference({7: "v1", 8: "v2"})
    loads: list[str] = []

    def load(version: str) -> str:
        loads.append(version)
        raise OSError(f"{version}: model.safetensors is truncated")

    adopter = Adopter("v1", "front-v1", load, inference.generations)

    async def attempt(served):
        return "pixels", with_generation(np.ones((1, 3)), 8)  # answered by v2

    async def scenario() -> None:
        await adopter.adopt(7)
        with pytest.raises(ModelChanged, match="could not load model v2: OSError"):
            await adopter.adopt(8)
        assert await on_one_model(adopter, attempt) is None
        assert loads == ["v2"] and adopter.current.version == "v1"

    asyncio.run(scenario())


def test_a_request_caught_in_a_swap_runs_again_on_the_new_model() -> None:
    """The inference process swapped between the front's decoding and its answer: the rows
    came from v2, so the request is decoded for v2 and run again; the answer is v2's."""
    inference = Inference({7: "v1", 8: "v2"})
    adopter = Adopter("v1", "front-v1", lambda version: f"front-{version}", inference.generations)
    answered_by = iter([8, 8])  # the inference process serves generation 8 from now on
    decoded_for: list[str] = []

    async def attempt(served):  # decode for `served`, classify
        decoded_for.append(served.model)
        return f"pixels for {served.model}", with_generation(np.ones((2, 3)), next(answered_by))

    async def scenario() -> None:
        await adopter.adopt(7)
        result = await on_one_model(adopter, attempt)
        assert result is not None
        served, made, rows = result
        assert (served.version, made, rows.shape) == ("v2", "pixels for front-v2", (2, 3))
        assert decoded_for == ["front-v1", "front-v2"]
        # swaps that never stop (or rows of two models): given up after the attempts, None
        mixed = np.concatenate([with_generation(np.ones((1, 3)), g) for g in (7, 8)])

        async def split(served):
            return None, mixed

        assert await on_one_model(adopter, split, attempts=2) is None

    asyncio.run(scenario())


def test_each_row_carries_its_models_generation_exactly() -> None:
    outputs = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    generation = GENERATION_START_LIMIT + 12_345  # beyond the start, still exact in float32
    joined = with_generation(outputs, generation)
    assert joined.dtype == np.float32 and joined.shape == (4, 6)
    rows, generations = split_generation(joined)
    np.testing.assert_array_equal(rows, outputs)
    assert generations.tolist() == [generation] * 4 and generation_of(generations) == generation
    assert generation_of(np.array([3, 4])) is None  # a request split over a swap
    assert 0 <= first_generation() < GENERATION_START_LIMIT
    with pytest.raises(ValueError, match="shape"):
        split_generation(np.zeros(3))


# ------------------------------------------------------------------ what is said about it


def test_the_champion_is_re_read_only_when_the_registry_changes(tmp_path: Path) -> None:
    from tests.code.test_serving import make_champion

    watch = ChampionWatch(Layout(tmp_path).registry_dir / REGISTRY_FILE)
    assert watch.champion() is None  # no registry beside the service (a bento)
    first = make_champion(tmp_path, seed=0, export=False)
    assert watch.champion() == first
    second = make_champion(tmp_path, seed=1, export=False)
    assert watch.champion() == second != first
    status = ModelStatus(first, watch.champion(), True, "follows")
    assert status.served_is_champion is False
    assert status.as_json()["served_is_champion"] is False
    assert ModelStatus(first, None, False, "a bento").as_json()["served_is_champion"] is None


def _record(moment: datetime, version: str) -> str:
    record = {
        "time": moment.isoformat(timespec="milliseconds"),
        "model_version": version,
        "label": "a",
        "confidence": 0.9,
        "width": 8,
        "height": 8,
        "channels": 1,
        "mean": 70.0,
        "std": 80.0,
    }
    return json.dumps(record) + "\n"


def test_the_monitor_says_first_that_the_served_model_is_not_the_champion(
    tmp_path: Path,
) -> None:
    """The log's newest records come from the retired champion: the verdict's reason starts
    with it, and the report names the served model."""
    from tasks.monitoring.run import check_drift
    from tests.code.test_serving import make_champion

    retired = make_champion(tmp_path, seed=0, export=False)
    current = make_champion(tmp_path, seed=1, export=False)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    logs = tmp_path / "logs" / "predictions"
    logs.mkdir(parents=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    versions = [current, retired, retired]  # the server went on with the old model
    lines = [_record(start + timedelta(seconds=i), v) for i, v in enumerate(versions)]
    (logs / "predictions-1.jsonl").write_text("".join(lines))

    log = read_log(logs, None)
    problem = served_model_problem(log, current)
    assert problem is not None and problem.startswith("served model is not the champion")
    assert retired in problem and "1 of 3 record(s)" in problem
    assert served_model_problem(log, retired) is None

    layout = Layout(tmp_path)
    _, payload = check_drift(layout, load_params(layout.params_file), now=start)
    assert payload["reason"].startswith("served model is not the champion"), payload["reason"]
    assert payload["reason"].endswith("fewer than monitor.min_records = 50")
    assert payload["model"]["served"] == retired and payload["model"]["champion"] == current
    assert payload["model"]["served_is_champion"] is False


# ------------------------------------------------------------------ a temporary server's home


def test_a_temporary_server_shares_the_stores_but_not_the_prometheus_folder(
    tmp_path: Path,
) -> None:
    """BentoML's own start-up step (`ensure_prometheus_dir`, which empties the folder) run with
    a private home leaves the shared home's Prometheus files alone."""
    shared = tmp_path / "shared"
    (shared / "models" / "sixfold-classifier").mkdir(parents=True)
    live_files = shared / "prometheus_multiproc_dir"
    live_files.mkdir()
    (live_files / "counter_123.db").write_bytes(b"the live server's counts")
    folder = tmp_path / "server"
    folder.mkdir()
    environment = private_bentoml_home({**os.environ, "BENTOML_HOME": str(shared)}, folder)
    home = Path(environment["BENTOML_HOME"])
    assert home.parent == folder
    assert (home / "models" / "sixfold-classifier").is_dir()  # the store, through the link
    assert not (home / "bentos").exists() and not (shared / "bentos").exists()  # none to share

    code = "from bentoml.serving import ensure_prometheus_dir; print(ensure_prometheus_dir())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    assert Path(result.stdout.strip().splitlines()[-1]).parent == home
    assert (live_files / "counter_123.db").read_bytes() == b"the live server's counts"
