"""Metrics: JSONL + TensorBoard writers, resume-safe truncation, PNG plots, progress bars.

`metrics.jsonl` holds one JSON object per line: `{"step": int, "time": unix
seconds, "<name>": float, ...}`. Non-finite values are written as the strings
"NaN", "Infinity" and "-Infinity" (strict JSON has no NaN); `read_metrics`
turns them back into floats.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import tqdm

from r1jax.fileio import atomic_write

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _encode(value: float) -> float | str:
    """A float as written to JSONL (non-finite as a string)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _decode(value: Any) -> Any:
    """Inverse of `_encode` for one JSONL value."""
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


def encode_nonfinite(tree: Any) -> Any:
    """A JSON-ready copy of nested dicts/lists with NaN and ±inf floats as strings (strict JSON has none)."""
    if isinstance(tree, dict):
        return {k: encode_nonfinite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [encode_nonfinite(v) for v in tree]
    return _encode(tree) if isinstance(tree, float) else tree


def decode_nonfinite(tree: Any) -> Any:
    """Inverse of `encode_nonfinite`."""
    if isinstance(tree, dict):
        return {k: decode_nonfinite(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode_nonfinite(v) for v in tree]
    return _decode(tree)


def _to_float(name: str, value: Any) -> float:
    """A python/numpy/jax scalar as a float; anything else is an error naming it."""
    array = np.asarray(value)
    if array.ndim != 0 or not (np.issubdtype(array.dtype, np.number)
                               or array.dtype == np.bool_):
        raise TypeError(f"metric {name!r} is not a numeric scalar: "
                        f"{type(value).__name__} of shape {array.shape}, dtype {array.dtype}")
    return float(array)


def _parse_lines(path: str) -> list[tuple[str, dict]]:
    """(raw line, decoded record) pairs; a truncated last line (crash mid-write) is dropped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # last line, no newline after it: cut short
                break
            raise ValueError(f"{path}:{number}: not a JSON line: {e}") from e
        pairs.append((line, {k: _decode(v) for k, v in record.items()}))
    return pairs


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics JSONL file; a truncated last line (crash mid-write) is dropped."""
    return [record for _, record in _parse_lines(os.fspath(path))]


def _repair_tail(path: str) -> None:
    """Drop a partial last line (no newline, not JSON) so appends start on a fresh line."""
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        with open(path, "rb+") as f:
            f.truncate(cut)
    else:
        with open(path, "ab") as f:
            f.write(b"\n")


def truncate_after(path: str | os.PathLike, step: int) -> int:
    """Drop records with step > `step` (and a truncated tail); return how many records went."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    pairs = _parse_lines(path)
    kept = [line for line, record in pairs if record["step"] <= step]
    atomic_write(path, "".join(line + "\n" for line in kept))
    return len(pairs) - len(kept)


def _import_tensorboardx():
    """tensorboardX, without letting it import torch (seconds, and unused for scalars)."""
    if "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # makes tensorboardX's optional `import torch` fail fast
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


class MetricsWriter:
    """Append scalars to `workdir/metrics.jsonl` and TensorBoard events in `workdir/tensorboard`.

    `enabled` defaults to `jax.process_index() == 0`, so every process may call
    `write` and only one writes. `resume_step=S` (a run restarted from the
    checkpoint of step S) first drops logged records after S, and tells
    TensorBoard to discard its events after S, so a killed-and-resumed run
    logs the same series as one left alone.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None,
                 resume_step: int | None = None, tensorboard: bool = True,
                 flush_secs: int = 30):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, JSONL_NAME)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if os.path.exists(self.path):
            _repair_tail(self.path)
            if resume_step is not None:
                truncate_after(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            tensorboardX = _import_tensorboardx()
            purge = None if resume_step is None else resume_step + 1
            self._tb = tensorboardX.SummaryWriter(
                os.path.join(self.workdir, TENSORBOARD_DIR), purge_step=purge,
                flush_secs=flush_secs)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Log one record of scalars (python, numpy or jax) at `step`."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsWriter for {self.path} is closed")
        for reserved in ("step", "time"):
            if reserved in scalars:
                raise ValueError(f"metric name {reserved!r} is reserved ({self.path})")
        values = {name: _to_float(name, v) for name, v in jax.device_get(dict(scalars)).items()}
        now = time.time()
        record = {"step": int(step), "time": now}
        record.update({name: _encode(v) for name, v in values.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, global_step=int(step), walltime=now)

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (JSONL is flushed on every write)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close both outputs; further writes raise."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_metrics(jsonl_path: str | os.PathLike, keys: Iterable[str],
                 out_png: str | os.PathLike, x: str = "step") -> list[str]:
    """One line-plot panel per key in `out_png`; returns the keys plotted, missing ones skipped."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, global backend untouched

    keys = list(keys)
    records = read_metrics(jsonl_path)
    series = {}
    for key in keys:
        points = [(r[x], r[key]) for r in records if key in r and x in r]
        if points:
            series[key] = points
    if not series:
        seen = sorted({k for r in records for k in r})
        raise ValueError(f"none of {keys} (against {x!r}) in {os.fspath(jsonl_path)}; "
                         f"it has {seen}")
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, points) in zip(axes, series.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.savefig(os.fspath(out_png), dpi=100)
    return list(series)


def _progress_default() -> str:
    """'bar' on a terminal of process 0, 'lines' off one, 'off' in CI and on other processes;
    R1JAX_PROGRESS overrides: bar (or 1), lines, 0 (or off/false)."""
    forced = os.environ.get("R1JAX_PROGRESS")
    if forced is not None:
        forced = forced.strip().lower()
        return ("bar" if forced in ("bar", "1", "true", "on") else "lines" if forced == "lines" else "off")
    if os.environ.get("CI") or jax.process_index() != 0:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def progress(iterable: Iterable | int | None = None, desc: str | None = None, *,
             total: int | None = None, enabled: bool | None = None, **kwargs) -> tqdm.tqdm | LogLines:
    """A tqdm bar over `iterable`, or a manual one (`.update(n)`) when given an int total.

    A bar on a terminal of process 0; off a terminal (nohup, SLURM, `| tee`) plain `LogLines` instead, a
    line at the start, every 30 s and at the end; nothing in CI or on other processes. `enabled=True`
    forces the bar, `enabled=False` silence; R1JAX_PROGRESS=bar / lines / 0 overrides the default.
    Iterating works whatever is shown.
    """
    if isinstance(iterable, int):
        iterable, total = None, iterable
    mode = ("bar" if enabled else "off") if enabled is not None else _progress_default()
    if mode == "lines":
        return LogLines(iterable, desc, total=total, initial=kwargs.get("initial", 0), unit=kwargs.get("unit", "it"))
    return tqdm.tqdm(iterable, desc=desc, total=total, disable=mode != "bar", dynamic_ncols=True, **kwargs)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class LogLines:
    """Progress as plain lines for a log file: `[desc] n/total (pct) rate, elapsed, ETA, metrics`.

    The tqdm subset the phases use (iteration, update, set_postfix, refresh, close). A line at the
    start, then at most one every `every_s` seconds, and one at close.
    """

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, *, total: int | None = None,
                 initial: int = 0, unit: str = "it", every_s: float = 30.0, file: Any = None):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit, self.every_s = iterable, desc or "progress", total, unit, every_s
        self.n = self._start_n = initial
        self.file, self.postfix, self.disable, self._closed = file, {}, False, False
        self._t0 = self._last = time.monotonic()
        self._write("started" if not initial else f"resumed at {initial}")

    def __iter__(self):
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._write()

    def set_postfix(self, values: Mapping[str, Any] | None = None, refresh: bool = False, **more: Any) -> None:
        self.postfix = {**(values or {}), **more}

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write("done")

    def line(self, note: str = "") -> str:
        """The current progress line."""
        now = time.monotonic()
        elapsed, done = now - self._t0, self.n - self._start_n
        parts = [f"[{self.desc}]", f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if done > 0 and self.total and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) * elapsed / done)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return " ".join(parts + ([note] if note else []))

    def _write(self, note: str = "") -> None:
        self._last = time.monotonic()
        print(self.line(note), file=self.file or sys.stderr, flush=True)


def show_metrics(bar: tqdm.tqdm, metrics: Mapping[str, Any]) -> None:
    """Show scalars (python, numpy or jax) as the bar's postfix, 4 significant digits."""
    values = jax.device_get(dict(metrics))
    bar.set_postfix({k: f"{_to_float(k, v):.4g}" for k, v in values.items()}, refresh=False)
