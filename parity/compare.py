"""Compare captured stages and hold each to its bound."""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.tolerances import Bound, Depths, bound_for


@dataclasses.dataclass(frozen=True)
class StageResult:
    stage: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    bound: Bound
    passed: bool
    note: str = ""  # why a stage failed without a number (missing or mis-shaped)

    def to_json(self) -> dict:
        return {
            "stage": self.stage, "shape": list(self.shape), "max_abs": self.max_abs, "max_rel": self.max_rel,
            "bound_kind": self.bound.kind, "bound": self.bound.value, "bound_reason": self.bound.reason,
            "passed": self.passed, "note": self.note,
        }


@dataclasses.dataclass(frozen=True)
class CaseReport:
    case: str
    checkpoint: str
    dtype: str
    stages: list[StageResult]

    @property
    def passed(self) -> bool:
        return all(stage.passed for stage in self.stages)

    @property
    def first_failure(self) -> StageResult | None:
        return next((stage for stage in self.stages if not stage.passed), None)

    def to_json(self) -> dict:
        first = self.first_failure
        return {
            "case": self.case, "checkpoint": self.checkpoint, "dtype": self.dtype, "passed": self.passed,
            "first_failure": first.stage if first else None,
            "stages": [stage.to_json() for stage in self.stages],
        }


def compare_stage(stage: str, ours: np.ndarray | None, reference: np.ndarray, dtype: str,
                  depths: Depths) -> StageResult:
    bound = bound_for(stage, dtype, depths)
    shape = tuple(reference.shape)
    if ours is None:
        return StageResult(stage, shape, float("nan"), float("nan"), bound, False, "not captured on the JAX side")
    if tuple(ours.shape) != shape:
        return StageResult(stage, shape, float("nan"), float("nan"), bound, False,
                           f"shape {tuple(ours.shape)} differs from HF's {shape}")
    difference = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    max_abs = float(difference.max()) if difference.size else 0.0
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    if scale > 0:
        max_rel = max_abs / scale
    else:  # an all-zero reference: any difference at all is an infinite relative error
        max_rel = 0.0 if max_abs == 0 else float("inf")
    limit = {"exact": max_abs == 0.0, "abs": max_abs <= bound.value, "rel": max_rel <= bound.value}
    return StageResult(stage, shape, max_abs, max_rel, bound, bool(limit[bound.kind]))


def compare(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], dtype: str,
            depths: Depths) -> list[StageResult]:
    """Compare every HF stage, in HF's execution order; a stage we did not capture fails."""
    return [compare_stage(stage, ours.get(stage), value, dtype, depths)
            for stage, value in reference.items() if stage != "decode.tokens"]
