"""The report: one self-contained HTML file (inline CSS, JS and data; no CDN, no server).

    path = write_report("runs/r1_zero_tiny")     # → runs/r1_zero_tiny/report.html

Curves of every logged metric by phase, eval tables, the flags of each RL phase with links to the
completions that show them, and a rollout browser whose tokens are coloured by log-prob, entropy,
ratio, advantage or KL to the reference. Per-token values travel as base64 float16.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np

from r1jax.errors import UsageError
from r1jax.report.flags import Flag, run_flags
from r1jax.report.rollouts import RolloutRecord
from r1jax.report.run import Run, load_run

REPORT_NAME = "report.html"
CHANNELS = {"logp": "logp", "old": "old_logp", "ref": "ref_logp", "ratio": "ratio", "ent": "entropy"}


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def _num(x: float, digits: int = 5) -> float | None:
    """A float rounded to `digits` significant digits for JSON; non-finite as None."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _correct(rec: RolloutRecord) -> np.ndarray | None:
    acc = rec.value("accuracy")
    return None if acc is None else acc > 0


def rollout_json(rec: RolloutRecord) -> dict:
    """One saved step as the page's browser reads it."""
    correct, clipped = _correct(rec), rec.clipped_N()
    rows = []
    for i in range(rec.rows):
        n, text = int(rec.lengths_N[i]), rec.token_text[i]
        ends = rec.piece_end_NxT[i, :n].tolist()
        # piece lengths in UTF-16 code units, as JavaScript strings count them (🙂 is 2)
        pieces = [len(text[a:b].encode("utf-16-le")) // 2 for a, b in zip([0] + ends[:-1], ends)]
        row = {"i": i, "g": i // rec.group_size, "text": text, "lens": _b64(np.asarray(pieces), "<u2"),
               "n": n, "reward": _num(float(rec.rewards_N[i])),
               "adv": _num(float(rec.advantages_N[i])), "values": [_num(float(v)) for v in rec.values_KxN[:, i]],
               "trunc": bool(rec.truncated_N[i]), "clipped": bool(clipped[i]),
               "correct": None if correct is None else bool(correct[i])}
        for key, field in CHANNELS.items():
            if field in rec.tokens:
                row[key] = _b64(rec.tokens[field][i, :n], "<f2")
        rows.append(row)
    return {"step": rec.step, "phase": rec.phase, "phaseStep": rec.phase_step, "G": rec.group_size,
            "prompts": rec.prompts, "answers": rec.answers, "rewardNames": rec.reward_names,
            "weights": [float(w) for w in rec.weights_K], "eps": [rec.info.get("eps_low", 0.2),
                                                                    rec.info.get("eps_high", 0.2)],
            "rowsTotal": rec.info.get("rows_total", rec.rows), "rows": rows}


def pick_steps(saved: list[int], must: Sequence[int], max_steps: int) -> list[int]:
    """At most `max_steps` of the saved steps: those in `must` (flag evidence, in that order of priority),
    the first and last, then evenly spaced ones."""
    chosen = [s for s in dict.fromkeys(must) if s in set(saved)][:max_steps]
    for s in [saved[0], saved[-1]] + [saved[round(j)] for j in np.linspace(0, len(saved) - 1, max(max_steps, 1))]:
        if len(chosen) >= max_steps:
            break
        if s not in chosen:
            chosen.append(s)
    return sorted(chosen)


def _evals(run: Run) -> list[dict]:
    """Per phase: eval metrics (`eval/…`, or a whole phase that logs pass@1) as a step × metric table."""
    tables = []
    for name, ph in run.phases.items():
        keys = [k for k in ph.series if k.startswith("eval/")]
        if not keys and any(k.startswith("pass@") for k in ph.series):
            keys = list(ph.series)
        if not keys:
            continue
        keys.sort(key=lambda k: (not k.endswith("pass@1"), k))  # pass@1 first
        steps = sorted({int(s) for k in keys for s in ph.series[k][0]})
        at = [{int(s): float(v) for s, v in zip(*ph.series[k])} for k in keys]
        rows = [[s] + [_num(a[s]) if s in a else None for a in at] for s in steps]
        tables.append({"phase": name, "columns": [k.removeprefix("eval/") for k in keys], "rows": rows})
    return tables


def report_data(run: Run, flags: dict[str, list[Flag]], max_steps: int = 12) -> dict:
    """Everything the page shows, as JSON-ready data."""
    must = [int(e.split(":")[0]) for fs in flags.values() for f in fs for e in f.evidence]
    saved = [r.step for r in run.rollouts]
    shown = set(pick_steps(saved, must, max_steps)) if saved else set()
    phases = [{"name": name, "rl": name in flags,
               "metrics": {k: [[int(s) for s in st], [_num(float(v)) for v in vs]]
                           for k, (st, vs) in ph.series.items()}} for name, ph in run.phases.items()]
    return {"workdir": os.path.abspath(run.workdir), "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "phases": phases, "evals": _evals(run),
            "flags": [{"phase": p, **dataclasses.asdict(f), "evidence": list(f.evidence)} for p, fs in flags.items()
                      for f in fs],
            "rollouts": [rollout_json(r) for r in run.rollouts if r.step in shown],
            "savedSteps": saved}


def _asset(name: str) -> str:
    return resources.files("r1jax.report").joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict) -> str:
    """The page: template + inline CSS/JS + the data as a JSON script element."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = f"r1jax report: {os.path.basename(data['workdir'])}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_escape(title)}</title>\n"
            f"<style>\n{_asset('report.css')}\n</style></head>\n<body>\n<h1>{_escape(title)}</h1>\n"
            f"<div id=\"app\">This report needs JavaScript.</div>\n"
            f"<script type=\"application/json\" id=\"report-data\">{payload}</script>\n"
            f"<script>\n{_asset('report.js')}\n</script>\n</body></html>\n")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def rl_flags(run: Run) -> dict[str, list[Flag]]:
    """Every detector on every RL phase (a phase with saved rollouts or a reward curve)."""
    return {name: run_flags(ph, run.rollouts_of(name)) for name, ph in run.phases.items()
            if run.rollouts_of(name) or ph.get("reward/mean") is not None}


def save_report(run: Run, flags: dict[str, list[Flag]], path: str | os.PathLike, max_steps: int = 12) -> str:
    """Write the report of a loaded run and its flags to `path` (atomically); returns the path."""
    if max_steps < 1:
        raise UsageError(f"max_steps={max_steps} must be >= 1")
    path = os.fspath(path)
    html = render_html(report_data(run, flags, max_steps))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, path)
    return path


def write_report(workdir: str | os.PathLike, out: str | os.PathLike | None = None, max_steps: int = 12) -> str:
    """Write the HTML report of `workdir` (default `workdir/report.html`); returns its path."""
    run = load_run(workdir)
    path = out if out is not None else os.path.join(os.fspath(workdir), REPORT_NAME)
    return save_report(run, rl_flags(run), path, max_steps)
