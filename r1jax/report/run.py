"""A finished (or running) workdir as the report reads it: metrics grouped by phase, and saved rollouts."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from r1jax.metrics import JSONL_NAME, read_metrics
from r1jax.report.rollouts import RolloutRecord, read_rollouts


@dataclasses.dataclass(frozen=True)
class PhaseSeries:
    """One phase's logged metrics: name (phase prefix stripped) → (global steps, values)."""

    name: str
    series: dict[str, tuple[np.ndarray, np.ndarray]]

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.series.get(key)

    def reward_terms(self) -> list[str]:
        """Names of the reward functions logged as `reward/<name>` (not mean, std or failure counts)."""
        return [k[len("reward/"):] for k in self.series if k.startswith("reward/")
                and k not in ("reward/mean", "reward/std") and not k.endswith("_failures")]


@dataclasses.dataclass(frozen=True)
class Run:
    """A workdir's metrics by phase (in the order the phases logged) and its saved rollouts."""

    workdir: str
    phases: dict[str, PhaseSeries]
    rollouts: list[RolloutRecord]

    def rollouts_of(self, phase: str) -> list[RolloutRecord]:
        return [r for r in self.rollouts if r.phase == phase]


def phase_series(records: list[dict]) -> dict[str, PhaseSeries]:
    """Group `metrics.jsonl` records by the phase prefix of each name (`rl/reward/mean` → phase `rl`)."""
    points: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for record in records:
        for key, value in record.items():
            if key in ("step", "time") or "/" not in key or not isinstance(value, (int, float)):
                continue
            phase, name = key.split("/", 1)
            points.setdefault(phase, {}).setdefault(name, []).append((int(record["step"]), float(value)))
    out = {}
    for phase, named in points.items():
        series = {}
        for name, pts in named.items():
            steps, values = zip(*sorted(pts))
            series[name] = (np.asarray(steps, np.int64), np.asarray(values, np.float64))
        out[phase] = PhaseSeries(phase, series)
    return out


def load_run(workdir: str | os.PathLike) -> Run:
    """Read a workdir; one without `metrics.jsonl` is an error that names it."""
    workdir = os.fspath(workdir)
    path = os.path.join(workdir, JSONL_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir!r} an r1jax workdir "
                                "(the --workdir of a run that has logged a step)?")
    return Run(workdir, phase_series(read_metrics(path)), read_rollouts(workdir))
