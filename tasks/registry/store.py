"""The registry of candidate models: `models/registry/registry.json` and one folder per candidate.

Promote, continual learning and package write it (one at a time, below); it keeps the registry
across `dvc repro` runs (the output is declared `persist: true`). Every candidate the gate has
judged is kept, promoted or not, so the history can be audited: its files are copied into
`models/registry/<id>/` (weights, card, the ONNX folder and the test set it was judged on,
`test.npz`), each with its sha256, and `registry.json` records its metrics, data version, params
hash, parent (the champion when it arrived), status and the reasons of the last decision, plus an
append-only list of events.

Writers (promote, continual learning, package) hold the registry lock (`tasks.registry.lock`)
for their whole read-decide-write. Crash consistency: `registry.json` is the one commit point.
A new entry's files are copied into a hidden folder with a unique name
(``.<id>.<random>.partial``) and renamed to ``<id>/`` when complete; only then is the new
`registry.json` written, to a unique temporary file renamed over the old one
(`tasks.core.io.write_bytes_atomically`). A kill at any moment therefore leaves the old
`registry.json` or the new one, each consistent with its folders; what an interrupted writer
left behind (a ``.partial`` folder, a ``.tmp`` file, a complete folder that no `registry.json`
lists yet) is garbage that no reader looks at. ``python -m tasks.registry --verify`` names it
(`tasks.registry.recovery`) and ``--clean`` removes it under the lock.

Torch-free on purpose: a serving process that runs the champion's ONNX file can call
:func:`champion` without importing torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.contracts import VersionedFile
from tasks.core.errors import MissingInput, UserError, shown
from tasks.core.fingerprint import fingerprint

REGISTRY_FILE = "registry.json"
WEIGHTS = "model.safetensors"
CARD = "model.json"
ONNX_FOLDER = "onnx"
TEST_SET = "test.npz"
# reports/compress.json "served" -> the file inside the ONNX folder that is served
SERVED_FILES = {"onnx_int8": "model.int8.onnx", "onnx_fp32": "model.onnx"}
PARTIAL_SUFFIX = ".partial"  # of a candidate's folder while its files are copied
ID_LENGTH = 12  # hex digits of a candidate id: short enough to read, 48 bits against collisions
_CHUNK = 1 << 22

Status = Literal["champion", "retired", "rejected"]
EventKind = Literal["registered", "promoted", "rejected", "retired"]


class RegistryError(UserError):
    """The registry is inconsistent: a listed file is missing or its checksum changed."""


class NoChampion(MissingInput):
    """The registry has no champion yet."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoredFile(Record):
    """One copied file: its sha256 (checkable with `sha256sum`) and size in bytes."""

    sha256: str
    bytes: int


class Baseline(Record):
    name: str
    accuracy: float


class Lineage(Record):
    """Where a model that was not trained by the pipeline came from (continual learning)."""

    kind: Literal["continual"]  # fine-tuned from its parent on a new data version, with replay
    batch: str  # the data version: data/batches/<batch> (a .dvc file versions it)
    source: str  # where the batch was read from (a folder, a CSV manifest or an s3:// prefix)
    train_images: int  # of the batch, fine-tuned on
    test_images: int  # of the batch, held out: part of the candidate's registered test set
    replay_images: int  # old train images fine-tuned on beside them


class Candidate(Record):
    """One model the gate has judged. `files` are relative to `models/registry/<id>/`."""

    id: str
    created: str  # ISO 8601, UTC, when it was registered
    files: dict[str, StoredFile]
    served_format: str  # reports/compress.json "served": onnx_int8 or onnx_fp32
    served_file: str  # the served ONNX file, relative to the candidate's folder
    accuracy: float  # test accuracy when registered (reports/metrics.json, checked by the gate)
    test_metrics: dict[str, Any]  # reports/metrics.json "test" as evaluate wrote it
    baseline: Baseline | None
    data_version: str  # fingerprint of the packed test split and meta.json
    test_images: int
    params_hash: str  # the model card's params_fingerprint
    parent: str | None  # the champion when this candidate was registered
    status: Status
    reasons: list[str]  # of the latest decision about it
    # set for continual learning's challengers only; registries written before it load unchanged
    lineage: Lineage | None = None
    # what `accuracy` (and test.npz) is: pipeline_test_set() or continual_test_set(); None in
    # registries written before it, where `measured_on` derives it the same way
    test_set: str | None = None

    @property
    def measured_on(self) -> str:
        """The test set its `accuracy` was measured on (the registry table's column)."""
        if self.test_set:
            return self.test_set
        if self.lineage is not None and self.parent:
            return continual_test_set(self.parent, self.lineage.batch)
        return pipeline_test_set(self.data_version)


def pipeline_test_set(data_version: str) -> str:
    """A pipeline candidate's test set: the packed test split of `data_version`."""
    return f"pipeline test split {data_version}"


def continual_test_set(parent: str, batch: str) -> str:
    """A continual challenger's test set: its parent's registered test set + the batch's part."""
    return f"test set of {parent} + batch {batch} test part"


class Event(Record):
    time: str  # ISO 8601, UTC
    kind: EventKind
    candidate: str
    reasons: list[str] = Field(default_factory=list)


class Registry(VersionedFile):
    """`models/registry/registry.json`: every candidate, the champion's id, the history."""

    PRODUCER: ClassVar[str] = "the promote stage"

    champion: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)

    def entry(self, candidate_id: str) -> Candidate | None:
        return next((c for c in self.candidates if c.id == candidate_id), None)

    def champion_entry(self) -> Candidate | None:
        return self.entry(self.champion) if self.champion else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_registry(registry_dir: Path) -> Registry:
    """The registry in `registry_dir`; an empty one when there is none yet."""
    path = registry_dir / REGISTRY_FILE
    return Registry.load(path) if path.exists() else Registry.create()


def save_registry(registry: Registry, registry_dir: Path) -> None:
    """Write registry.json atomically (temporary file + rename: never half-written)."""
    registry.save(registry_dir / REGISTRY_FILE)


def sha256_file(path: Path) -> str:
    """The plain sha256 of a file's bytes (what `sha256sum` prints), unlike a fingerprint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def candidate_id(weights: Path, card: Path) -> str:
    """The content hash of a model: its weights and its card (architecture, classes, params)."""
    return fingerprint({"candidate": "weights+card"}, [weights, card], length=ID_LENGTH)


def data_version(packed_dir: Path) -> str:
    """The fingerprint of the packed test split and its metadata: which data judged a model."""
    files = [packed_dir / "test_x.npy", packed_dir / "test_y.npy", packed_dir / "meta.json"]
    return fingerprint({"data": "packed test split"}, files)


def save_test_set(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images and labels as an .npz with fixed timestamps: the same arrays give the same
    bytes (np.savez stamps the current time into the zip, so its checksum would change)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("images", images), ("labels", labels)):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_test_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 (N, C, H, W) images and integer labels a candidate was registered with."""
    with np.load(path, allow_pickle=False) as arrays:
        return arrays["images"], arrays["labels"]


def store_files(
    registry_dir: Path,
    identity: str,
    models_dir: Path,
    onnx_dir: Path,
    test_set: tuple[np.ndarray, np.ndarray],
) -> dict[str, StoredFile]:
    """Copy a candidate's files into `registry_dir/<identity>/`; their checksums by path.

    The copy is made in a hidden folder with a unique name and renamed into place, so a folder
    named after a candidate is always complete; a leftover of an interrupted run (a folder that
    no registry.json lists) is replaced. Call it holding the registry lock, before the
    registry.json that lists the candidate is saved.
    """
    registry_dir.mkdir(parents=True, exist_ok=True)
    final = registry_dir / identity
    if final.exists():
        shutil.rmtree(final)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{identity}.", suffix=PARTIAL_SUFFIX, dir=registry_dir)
    )
    (staging / ONNX_FOLDER).mkdir(parents=True)
    for name in (WEIGHTS, CARD):
        shutil.copyfile(models_dir / name, staging / name)
    for source in sorted(onnx_dir.rglob("*")):
        if source.is_file():
            target = staging / ONNX_FOLDER / source.relative_to(onnx_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    save_test_set(staging / TEST_SET, *test_set)
    files = {
        path.relative_to(staging).as_posix(): StoredFile(
            sha256=sha256_file(path), bytes=path.stat().st_size
        )
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    }
    os.replace(staging, final)
    return files


def record_decision(
    registry: Registry, candidate: Candidate, promoted: bool, reasons: list[str], time: str
) -> Registry:
    """The registry after the gate's decision about `candidate` (new or already registered).

    A decision identical to the recorded one (same status, same reasons) returns `registry`
    unchanged: rerunning the stage on the same inputs adds no event and changes no byte.
    Promotion retires the previous champion; the champion itself is never re-judged.
    """
    if registry.champion == candidate.id:
        return registry  # already the champion: nothing to decide
    existing = registry.entry(candidate.id)
    status: Status = "champion" if promoted else "rejected"
    if existing is not None and existing.status == status and existing.reasons == reasons:
        return registry
    updated = (existing or candidate).model_copy(update={"status": status, "reasons": reasons})
    previous = registry.champion if promoted else None
    candidates = []
    for entry in registry.candidates:
        if entry.id == updated.id:
            entry = updated
        elif entry.id == previous:
            entry = entry.model_copy(update={"status": "retired"})
        candidates.append(entry)
    events = list(registry.events)
    if existing is None:
        candidates.append(updated)
        events.append(Event(time=time, kind="registered", candidate=updated.id))
    if previous is not None:
        replaced = [f"replaced by {updated.id}"]
        events.append(Event(time=time, kind="retired", candidate=previous, reasons=replaced))
    kind: EventKind = "promoted" if promoted else "rejected"
    events.append(Event(time=time, kind=kind, candidate=updated.id, reasons=reasons))
    return registry.model_copy(
        update={
            "champion": updated.id if promoted else registry.champion,
            "candidates": candidates,
            "events": events,
        }
    )


@dataclass(frozen=True)
class EntryFiles:
    """A registered model's files, as absolute paths (`folder` is what load_model reads)."""

    entry: Candidate
    folder: Path
    weights: Path
    card: Path
    served_onnx: Path
    onnx_dir: Path
    test_set: Path


def files_of(registry_dir: Path, entry: Candidate) -> EntryFiles:
    folder = (registry_dir / entry.id).resolve()
    return EntryFiles(
        entry,
        folder,
        folder / WEIGHTS,
        folder / CARD,
        folder / entry.served_file,
        folder / ONNX_FOLDER,
        folder / TEST_SET,
    )


def file_problems(registry_dir: Path, entry: Candidate) -> list[str]:
    """Every recorded file of `entry` that is missing or whose sha256 changed."""
    problems = []
    for relative, stored in entry.files.items():
        path = registry_dir / entry.id / relative
        if not path.is_file():
            problems.append(f"{entry.id}/{relative} is missing")
        elif sha256_file(path) != stored.sha256:
            problems.append(f"{entry.id}/{relative} changed (sha256 differs from the record)")
    for required in (WEIGHTS, CARD, TEST_SET, entry.served_file):
        if required not in entry.files:
            problems.append(f"{entry.id}: no {required} recorded")
    return problems


def integrity_problems(registry_dir: Path) -> list[str]:
    """Everything wrong with the registry: files, checksums, the champion pointer, statuses."""
    registry = load_registry(registry_dir)
    problems = [p for entry in registry.candidates for p in file_problems(registry_dir, entry)]
    ids = [entry.id for entry in registry.candidates]
    problems += [
        f"{i} is listed {ids.count(i)} times" for i in sorted(set(ids)) if ids.count(i) > 1
    ]
    crowned = [entry.id for entry in registry.candidates if entry.status == "champion"]
    expected = [registry.champion] if registry.champion else []
    if crowned != expected:
        problems.append(f"champion is {registry.champion}, but status champion is on {crowned}")
    if registry.champion and registry.champion not in ids:
        problems.append(f"champion {registry.champion} is not among the candidates")
    known = {e.candidate for e in registry.events}
    problems += [f"{i} has no event in the history" for i in ids if i not in known]
    return problems


def check_integrity(registry_dir: Path) -> None:
    """Raise RegistryError listing every problem :func:`integrity_problems` finds."""
    problems = integrity_problems(registry_dir)
    if problems:
        raise RegistryError(f"{shown(registry_dir)}: " + "; ".join(problems))


def champion(registry_dir: Path, verify: bool = True) -> EntryFiles:
    """The champion's registry entry and files (absolute paths), its checksums checked.

    Raises:
        NoChampion: the registry has none (run the pipeline: `dvc repro`).
        RegistryError: one of its files is missing or changed.
    """
    entry = load_registry(registry_dir).champion_entry()
    if entry is None:
        raise NoChampion(
            f"{shown(registry_dir)} has no champion yet; run the pipeline first (`dvc repro`)"
        )
    if verify and (problems := file_problems(registry_dir, entry)):
        raise RegistryError(f"{shown(registry_dir)}: champion " + "; ".join(problems))
    return files_of(registry_dir, entry)
