"""Where everything lives: one object names every data, models and reports path of a repository.

Stage functions take a :class:`Layout` (default: the repository around the working directory),
so a stage called from a Prefect worker, a notebook or a test in another folder still reads and
writes inside its repository. `dvc.yaml` declares the same paths, relative to the root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """Every path of one sixfold repository, absolute under `root`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def discover(cls, start: Path | None = None) -> Layout:
        """The repository that holds `start` (default: the working directory).

        The nearest folder, from `start` upwards, with a `dvc.yaml` or a `params.yaml`; `start`
        itself when there is none (a new project before its first file).
        """
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "dvc.yaml").exists() or (folder / "params.yaml").exists():
                return cls(folder)
        return cls(here)

    # ------------------------------------------------------------------ configuration
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    # ------------------------------------------------------------------ data
    @property
    def source_file(self) -> Path:
        """The fingerprint of data.source, the file through which DVC sees the source."""
        return self.root / "data" / "source.json"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def raw_files(self) -> Path:
        return self.raw_dir / "files"

    @property
    def raw_manifest(self) -> Path:
        return self.raw_dir / "manifest.csv"

    @property
    def validated_manifest(self) -> Path:
        return self.root / "data" / "validated" / "manifest.csv"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def split_file(self) -> Path:
        return self.root / "data" / "splits" / "split.csv"

    @property
    def packed_dir(self) -> Path:
        return self.root / "data" / "packed"

    @property
    def packed_meta(self) -> Path:
        return self.packed_dir / "meta.json"

    @property
    def folds_file(self) -> Path:
        return self.packed_dir / "folds.npy"

    @property
    def augmented_dir(self) -> Path:
        return self.root / "data" / "augmented"

    # ------------------------------------------------------------------ models
    @property
    def models_dir(self) -> Path:
        """The exported model: model.safetensors + model.json."""
        return self.root / "models"

    @property
    def checkpoint_dir(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def tune_dir(self) -> Path:
        return self.models_dir / "tune"

    @property
    def best_params(self) -> Path:
        """The tuned values, a config override that train applies over params.yaml."""
        return self.tune_dir / "best_params.yaml"

    @property
    def search_dir(self) -> Path:
        """Ray's experiment storage; kept across runs so an interrupted search resumes."""
        return self.tune_dir / "search"

    # ------------------------------------------------------------------ reports
    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def data_reports(self) -> Path:
        """validation.json, split.json and the data plots."""
        return self.reports_dir / "data"

    @property
    def validation_report(self) -> Path:
        return self.data_reports / "validation.json"

    @property
    def split_report(self) -> Path:
        return self.data_reports / "split.json"

    @property
    def augment_preview(self) -> Path:
        return self.reports_dir / "augment" / "preview.png"

    @property
    def tune_reports(self) -> Path:
        """trials.csv, summary.json and the search plots."""
        return self.reports_dir / "tune"

    @property
    def tune_summary(self) -> Path:
        return self.tune_reports / "summary.json"

    @property
    def train_report(self) -> Path:
        return self.reports_dir / "train.json"

    @property
    def cv_report(self) -> Path:
        return self.reports_dir / "cv.json"

    @property
    def dvclive_dir(self) -> Path:
        return self.reports_dir / "dvclive"

    @property
    def curves_plot(self) -> Path:
        return self.reports_dir / "plots" / "learning_curves.png"

    @property
    def metrics_file(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def evaluation_report(self) -> Path:
        """The test split's details (size, per-class accuracy): diagnostics, not DVC metrics."""
        return self.reports_dir / "evaluation.json"

    @property
    def confusion_file(self) -> Path:
        return self.reports_dir / "plots" / "confusion.csv"

    @property
    def evaluation_plots(self) -> Path:
        """confusion.png and reliability.png (the confusion matrix's DVC plot is confusion.csv)."""
        return self.reports_dir / "plots"

    @property
    def explain_reports(self) -> Path:
        """<method>.png attribution grids and summary.json (the randomization check)."""
        return self.reports_dir / "explain"

    @property
    def onnx_dir(self) -> Path:
        """model.onnx (fp32) and model.int8.onnx: the network with the shared preprocessing."""
        return self.models_dir / "onnx"

    @property
    def compress_report(self) -> Path:
        return self.reports_dir / "compress.json"

    @property
    def registry_dir(self) -> Path:
        """The champion registry: registry.json and one folder of files per candidate."""
        return self.models_dir / "registry"

    @property
    def gate_report(self) -> Path:
        return self.reports_dir / "gate.json"

    @property
    def html_report(self) -> Path:
        return self.reports_dir / "index.html"

    @property
    def bentoml_home(self) -> Path:
        """The project's own BentoML store (models and bentos): BENTOML_HOME for every stage,
        `make serve` and the tests; nothing goes to the home folder."""
        return self.root / "models" / "bentoml"

    @property
    def package_report(self) -> Path:
        return self.reports_dir / "package.json"

    def relative(self, path: Path) -> Path:
        """`path` relative to the root when it is inside it (for messages), else as it is."""
        try:
            return Path(path).resolve().relative_to(self.root)
        except ValueError:
            return Path(path)
