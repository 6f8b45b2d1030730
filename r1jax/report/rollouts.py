"""Saved rollouts: whole RL steps (texts, tokens, rewards, per-token log-probs) in `workdir/rollouts/`.

One compressed `.npz` per saved step, named by the global step (`rollouts/00000042.npz`) and written
atomically (a temporary file, then `os.replace`), so a crash leaves a whole file or none. A run
resumed from the checkpoint of global step S drops the files of steps >= S before it starts
(`drop_from`), as `metrics.jsonl` drops its records, and writes them again: a killed-and-resumed run
saves the same files as one left alone. Per-token arrays are float16 on disk.

Per-token fields: `logp` (the sampler's log π of the sampled token), `old_logp` (π_old of the update:
the trainer's recomputed log-probs, or the sampler's when `recompute_old_logps` is off), `ref_logp`
(π_ref, only when the KL term is on), `ratio` (π_new/π_old, π_new the policy after this step's updates)
and `entropy` (of π_new). `ratio` and `entropy` cost one extra forward pass of the saved rows, on
saved steps only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from r1jax.errors import UsageError

ROLLOUT_DIR = "rollouts"
_NAME = re.compile(r"^(\d{8})\.npz$")
_TOKEN_FIELDS = ("logp", "old_logp", "ref_logp", "ratio", "entropy")


@dataclasses.dataclass(frozen=True)
class RolloutLog:
    """Which RL steps save their rollouts: every `every` phase steps (0: none) and the phase's last,
    at most `max_rows` rows each (whole groups: the first ⌊max_rows / G⌋ groups, at least one)."""

    every: int = 5
    max_rows: int = 128

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"RolloutLog.every={self.every} must be >= 0 (0: no rollouts saved)")
        if self.max_rows < 1:
            raise ValueError(f"RolloutLog.max_rows={self.max_rows} must be >= 1")

    def saves(self, phase_step: int, steps: int) -> bool:
        """Whether phase step `phase_step` (0-based) of `steps` is saved."""
        return self.every > 0 and (phase_step % self.every == 0 or phase_step == steps - 1)


@dataclasses.dataclass
class RolloutRecord:
    """One saved RL step: N = groups·G rows (row i is in group i // G), T completion slots."""

    phase: str
    phase_step: int
    step: int  # global step, as in metrics.jsonl
    group_size: int
    prompts: list[str]  # one per group
    answers: list[str]  # gold answer of each group's problem
    texts: list[str]  # decoded completions (what the rewards scored)
    token_text: list[str]  # the tokens' pieces joined; piece t of row i ends at piece_end_NxT[i, t]
    piece_end_NxT: np.ndarray
    tokens_NxT: np.ndarray
    lengths_N: np.ndarray
    truncated_N: np.ndarray
    rewards_N: np.ndarray  # the total that advantages came from (overlong penalty included)
    reward_names: list[str]
    values_KxN: np.ndarray  # each reward function's own value (unweighted)
    weights_K: np.ndarray
    advantages_N: np.ndarray
    tokens: dict[str, np.ndarray]  # _TOKEN_FIELDS → [N, T] (ref_logp absent without a KL term)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # eps_low/high, rows_total, max_new_tokens

    @property
    def rows(self) -> int:
        return len(self.texts)

    def value(self, name: str) -> np.ndarray | None:
        """One reward's values per row, or None when the run has no reward of that name."""
        return self.values_KxN[self.reward_names.index(name)] if name in self.reward_names else None

    def token_mask_NxT(self) -> np.ndarray:
        return np.arange(self.tokens_NxT.shape[1])[None] < self.lengths_N[:, None]

    def clipped_N(self) -> np.ndarray:
        """Rows with a token whose ratio left [1 − eps_low, 1 + eps_high]."""
        lo, hi = 1.0 - self.info.get("eps_low", 0.2), 1.0 + self.info.get("eps_high", 0.2)
        ratio = self.tokens["ratio"].astype(np.float32)
        return (((ratio < lo) | (ratio > hi)) & self.token_mask_NxT()).any(axis=1)


def rollout_path(workdir: str | os.PathLike, step: int) -> str:
    return os.path.join(os.fspath(workdir), ROLLOUT_DIR, f"{step:08d}.npz")


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """Global steps with a saved rollout file, ascending (temporary files ignored)."""
    folder = os.path.join(os.fspath(workdir), ROLLOUT_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(folder)) if m)


def drop_from(workdir: str | os.PathLike, step: int) -> int:
    """Delete saved rollouts of global steps >= `step` (a resume re-runs them); returns how many."""
    gone = [s for s in saved_steps(workdir) if s >= step]
    for s in gone:
        os.remove(rollout_path(workdir, s))
    return len(gone)


def save_record(workdir: str | os.PathLike, rec: RolloutRecord) -> str:
    """Write `rec` to its file atomically; returns the path."""
    path = rollout_path(workdir, rec.step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {"phase": rec.phase, "phase_step": rec.phase_step, "step": rec.step, "group_size": rec.group_size,
            "reward_names": rec.reward_names, "info": rec.info}
    arrays = {"meta": np.asarray(json.dumps(meta)), "prompts": np.asarray(rec.prompts, dtype=str),
              "answers": np.asarray(rec.answers, dtype=str), "texts": np.asarray(rec.texts, dtype=str),
              "token_text": np.asarray(rec.token_text, dtype=str),
              "piece_end_NxT": rec.piece_end_NxT.astype(np.int32), "tokens_NxT": rec.tokens_NxT.astype(np.int32),
              "lengths_N": rec.lengths_N.astype(np.int32), "truncated_N": rec.truncated_N.astype(bool),
              "rewards_N": rec.rewards_N.astype(np.float32), "values_KxN": rec.values_KxN.astype(np.float32),
              "weights_K": rec.weights_K.astype(np.float32), "advantages_N": rec.advantages_N.astype(np.float32)}
    arrays.update({f"tok_{k}": v.astype(np.float16) for k, v in rec.tokens.items()})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def load_record(path: str | os.PathLike) -> RolloutRecord:
    """Read one saved step; a file that is not one is an error naming it."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: not a saved rollout file ({e})") from e
    return RolloutRecord(
        phase=meta["phase"], phase_step=meta["phase_step"], step=meta["step"], group_size=meta["group_size"],
        prompts=a["prompts"].tolist(), answers=a["answers"].tolist(), texts=a["texts"].tolist(),
        token_text=a["token_text"].tolist(), piece_end_NxT=a["piece_end_NxT"], tokens_NxT=a["tokens_NxT"],
        lengths_N=a["lengths_N"], truncated_N=a["truncated_N"], rewards_N=a["rewards_N"],
        reward_names=list(meta["reward_names"]), values_KxN=a["values_KxN"], weights_K=a["weights_K"],
        advantages_N=a["advantages_N"],
        tokens={k[4:]: a[k].astype(np.float32) for k in a if k.startswith("tok_")}, info=meta["info"])


def read_rollouts(workdir: str | os.PathLike, until_step: int | None = None) -> list[RolloutRecord]:
    """Every saved step of a workdir (up to `until_step`, inclusive), ascending."""
    return [load_record(rollout_path(workdir, s)) for s in saved_steps(workdir)
            if until_step is None or s <= until_step]


def token_pieces(decode: Callable[[list[int]], str], ids: Sequence[int]) -> tuple[str, np.ndarray]:
    """(joined text, end offset of each token's piece): streaming detokenization, so a token that ends
    inside a multi-byte character shows nothing and the one that completes it shows the character."""
    ids = [int(i) for i in ids]
    text, ends, prefix, read = "", [], 0, 0
    for t in range(len(ids)):
        before, now = decode(ids[prefix:read]), decode(ids[prefix:t + 1])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            text += now[len(before):]
            prefix, read = read, t + 1
        ends.append(len(text))
    return text, np.asarray(ends, np.int32)
