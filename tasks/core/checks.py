"""The result of one check of data or of a model: a figure, its threshold, and the verdict."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        figures = f"{self.value:.4f} (threshold {self.threshold:.4f})"
        return f"{self.name}: {figures} {verdict} {self.detail}".rstrip()
