"""Constructed runs for the report's tests: curves, saved rollouts, and a headless Chromium."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from r1jax.metrics import MetricsWriter
from r1jax.report.rollouts import RolloutRecord, save_record
from r1jax.report.run import PhaseSeries


def series(curves: dict[str, list[float]], start: int = 0, name: str = "rl") -> PhaseSeries:
    """A phase whose metric `k` takes `curves[k][t]` at global step start + t."""
    return PhaseSeries(name, {k: (np.arange(start, start + len(v)), np.asarray(v, float)) for k, v in curves.items()})


def record(step: int, texts: list[str], answers: list[str], values: dict[str, list[float]], group_size: int = 4,
           phase: str = "rl", ratio: np.ndarray | None = None, entropy: float = 1.0, truncated=None,
           kl_beta: float = 0.0) -> RolloutRecord:
    """A saved step of len(texts) rows; one token per character (id = code point), G rows per answer."""
    n, width = len(texts), max(len(t) for t in texts)
    tokens = np.zeros((n, width), np.int32)
    for i, t in enumerate(texts):
        tokens[i, :len(t)] = [ord(c) for c in t]
    lengths = np.asarray([len(t) for t in texts], np.int32)
    names = list(values)
    values_KxN = np.asarray([values[k] for k in names], np.float32)
    rewards = values_KxN.sum(axis=0)
    grouped = rewards.reshape(-1, group_size)
    adv = ((grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-4)).reshape(-1)
    mask = np.arange(width)[None] < lengths[:, None]
    per_token = {"logp": np.where(mask, -0.7, 0.0), "old_logp": np.where(mask, -0.7, 0.0),
                 "ratio": np.where(mask, 1.0, 0.0) if ratio is None else ratio,
                 "entropy": np.where(mask, entropy, 0.0)}
    if kl_beta:
        per_token["ref_logp"] = np.where(mask, -0.9, 0.0)
    return RolloutRecord(
        phase=phase, phase_step=step, step=step, group_size=group_size,
        prompts=[f"Compute the task with answer {a}." for a in answers], answers=list(answers), texts=list(texts),
        token_text=list(texts), piece_end_NxT=np.where(mask, np.arange(1, width + 1)[None], lengths[:, None]),
        tokens_NxT=tokens, lengths_N=lengths,
        truncated_N=np.zeros(n, bool) if truncated is None else np.asarray(truncated, bool),
        rewards_N=rewards, reward_names=names, values_KxN=values_KxN, weights_K=np.ones(len(names), np.float32),
        advantages_N=adv.astype(np.float32), tokens={k: np.asarray(v, np.float32) for k, v in per_token.items()},
        info={"eps_low": 0.2, "eps_high": 0.2, "kl_beta": kl_beta, "max_new_tokens": width, "rows_total": n})


def write_workdir(workdir, ph: PhaseSeries, records: list[RolloutRecord], extra: dict[str, dict[int, float]] = ()):
    """metrics.jsonl (the phase's curves under its prefix, plus `extra` name → {step: value}) and rollout files."""
    rows: dict[int, dict[str, float]] = {}
    for key, (steps, values) in ph.series.items():
        for s, v in zip(steps, values):
            rows.setdefault(int(s), {})[f"{ph.name}/{key}"] = float(v)
    for key, points in dict(extra).items():
        for s, v in points.items():
            rows.setdefault(int(s), {})[key] = float(v)
    with MetricsWriter(workdir, tensorboard=False) as w:
        for s in sorted(rows):
            w.write(s, rows[s])
    for rec in records:
        save_record(workdir, rec)
    return workdir


def chromium() -> str:
    """The Chromium binary; missing: a failure in CI (CI=true), else a skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    message = "chromium is not on PATH: .ci/run installs Debian's package (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def open_in_chromium(html_path, tmp_path, screenshot=None, size=(1280, 1600)) -> tuple[str, str]:
    """(rendered DOM, stderr with console messages) of the page after its script ran; optional PNG."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]
    url = "file://" + os.path.abspath(html_path)
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, timeout=120)
    if screenshot is not None:
        shot = subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
        assert os.path.exists(screenshot), shot.stderr.decode(errors="replace")[-2000:]
    return dom.stdout.decode("utf-8", errors="replace"), dom.stderr.decode("utf-8", errors="replace")


def console_errors(stderr: str) -> list[str]:
    """Chromium's log lines of page console errors and uncaught exceptions."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
