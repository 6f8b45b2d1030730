"""Tests for r1jax.metrics: JSONL, resume truncation, TensorBoard events, plots, progress."""
import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.metrics import (LogLines, MetricsWriter, plot_metrics, progress, read_metrics,
                           show_metrics, truncate_after)


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def _events(workdir):
    """Every Event proto in the TensorBoard files under workdir, in file order."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
        with open(name, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def _scalars(workdir, tag):
    return [(e.step, v.simple_value) for e in _events(workdir)
            for v in e.summary.value if v.tag == tag]


def test_jsonl_round_trip_converts_scalars_and_nonfinite(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(1, {"loss": jnp.float32(0.25), "acc": np.float64(0.5), "n": 3,
                    "ok": True, "x": jnp.asarray(2.0)})
        w.write(2, {"loss": float("nan"), "kl": jnp.inf, "neg": -math.inf})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    raw = json.loads(lines[1], parse_constant=lambda c: pytest.fail(f"bare {c} in JSONL"))
    assert raw["loss"] == "NaN" and raw["kl"] == "Infinity" and raw["neg"] == "-Infinity"
    first, second = read_metrics(tmp_path / "metrics.jsonl")
    assert {k: v for k, v in first.items() if k != "time"} == {
        "step": 1, "loss": 0.25, "acc": 0.5, "n": 3.0, "ok": 1.0, "x": 2.0}
    assert isinstance(first["time"], float) and first["time"] > 1e9
    assert math.isnan(second["loss"]) and second["kl"] == math.inf and second["neg"] == -math.inf


def test_each_write_is_flushed(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(7, {"loss": 1.0})
        assert _strip_time(read_metrics(tmp_path / "metrics.jsonl")) == [{"step": 7, "loss": 1.0}]


def test_bad_metrics_are_rejected_by_name(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        with pytest.raises(TypeError, match="'vec' is not a numeric scalar"):
            w.write(0, {"vec": jnp.ones(3)})
        with pytest.raises(TypeError, match="'name'"):
            w.write(0, {"name": "abc"})
        with pytest.raises(ValueError, match="'step' is reserved"):
            w.write(0, {"step": 1})
    with pytest.raises(RuntimeError, match="closed"):
        w.write(1, {"loss": 1.0})


def test_truncated_last_line_is_skipped_and_repaired_on_reopen(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(1, {"loss": 1.0})
        w.write(2, {"loss": 2.0})
    with open(path, "a") as f:
        f.write('{"step": 3, "loss": 3.')  # crash mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.write(3, {"loss": 3.5})
    assert _strip_time(read_metrics(path))[-1] == {"step": 3, "loss": 3.5}
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_metrics(path)


def test_truncate_after_drops_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 6):
            w.write(step, {"loss": float(step)})
    before = path.read_text().splitlines()
    assert truncate_after(path, 3) == 2
    assert path.read_text().splitlines() == before[:3]  # kept lines byte for byte
    assert truncate_after(tmp_path / "absent.jsonl", 3) == 0


def test_killed_and_resumed_run_logs_what_an_uninterrupted_one_does(tmp_path):
    def run(workdir, steps, resume_step=None):
        with MetricsWriter(workdir, resume_step=resume_step) as w:
            for step in steps:
                w.write(step, {"loss": 1.0 / step})

    run(tmp_path / "alone", range(1, 7))
    run(tmp_path / "killed", range(1, 6))  # checkpoint at 3, logged up to 5, killed
    run(tmp_path / "killed", range(4, 7), resume_step=3)
    alone = _strip_time(read_metrics(tmp_path / "alone" / "metrics.jsonl"))
    resumed = _strip_time(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert resumed == alone
    # TensorBoard got a purge marker at step 4, so it discards the first run's 4 and 5
    purges = [e.step for e in _events(tmp_path / "killed") if e.HasField("session_log")]
    assert purges == [4]


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write(2, {"loss": 0.5, "reward/mean": jnp.float32(0.75)})
        w.write(3, {"loss": 0.25})
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert _scalars(tmp_path, "loss") == [(2, 0.5), (3, 0.25)]
    assert _scalars(tmp_path, "reward/mean") == [(2, 0.75)]


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with MetricsWriter(workdir, enabled=False) as w:
        w.write(1, {"loss": 1.0})
    assert not workdir.exists()


def test_plot_writes_png_and_skips_missing_keys(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(10):
            w.write(step, {"loss": 1.0 / (step + 1), "reward": step / 10})
    out = tmp_path / "plot.png"
    plotted = plot_metrics(tmp_path / "metrics.jsonl", ["loss", "absent", "reward"], out)
    assert plotted == ["loss", "reward"]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    with pytest.raises(ValueError, match="none of .*'absent'.*'loss'"):
        plot_metrics(tmp_path / "metrics.jsonl", ["absent"], tmp_path / "none.png")


def test_progress_off_a_terminal_writes_log_lines_and_is_quiet_in_ci(capsys, monkeypatch):
    monkeypatch.delenv("R1JAX_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    bar = progress(range(5), "rl")  # pytest's stderr is not a terminal: a log file's view
    assert isinstance(bar, LogLines) and list(bar) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[rl] 0/5 (0%)") and lines[0].endswith("started")
    assert lines[-1].startswith("[rl] 5/5 (100%)") and lines[-1].endswith("done") and len(lines) == 2
    monkeypatch.setenv("CI", "true")
    quiet = progress(range(3))
    assert quiet.disable and list(quiet) == [0, 1, 2]
    monkeypatch.setenv("R1JAX_PROGRESS", "0")
    monkeypatch.delenv("CI")
    assert progress(range(3)).disable
    assert capsys.readouterr().err == ""


def test_log_lines_report_rate_eta_and_metrics_at_most_every_interval():
    out = io.StringIO()
    lines = LogLines(desc="pretrain", total=100, initial=10, unit="step", every_s=3600.0, file=out)
    for _ in range(20):
        lines.update(1)  # within the interval: no line
    assert out.getvalue().count("\n") == 1 and "resumed at 10" in out.getvalue()
    show_metrics(lines, {"loss": np.float32(1.23456)})
    lines._t0 -= 10.0  # 20 steps in 10 s
    text = lines.line()
    assert text.startswith("[pretrain] 30/100 (30%)") and "loss=1.235" in text
    rate = float(text.split(" step/s")[0].split()[-1])
    assert rate == pytest.approx(2.0, rel=0.05)
    assert "ETA 0m35s" in text  # 70 steps left at 2 steps/s
    lines.every_s = 0.0
    lines.update(1)
    lines.close()
    lines.close()
    assert out.getvalue().count("\n") == 3 and out.getvalue().rstrip().endswith("done")


def test_progress_shows_desc_and_metrics_when_asked(monkeypatch):
    out = io.StringIO()
    bar = progress(4, "train", enabled=True, file=out)
    assert bar.total == 4
    bar.update(2)
    show_metrics(bar, {"loss": jnp.float32(0.123456), "kl": np.float64(2e-5)})
    bar.refresh()
    bar.close()
    text = out.getvalue()
    assert "train" in text and "loss=0.1235" in text and "kl=2e-05" in text
    monkeypatch.setenv("R1JAX_PROGRESS", "1")
    assert not progress(range(2)).disable


def test_nonfinite_values_round_trip_through_strict_json():
    from r1jax.metrics import decode_nonfinite, encode_nonfinite

    tree = {"eval": {"pass@1": 0.5, "self_correction_rate": math.nan, "max": math.inf}, "list": [-math.inf, 1, "a"]}
    text = json.dumps(encode_nonfinite(tree), allow_nan=False)  # what checkpoint meta needs
    back = decode_nonfinite(json.loads(text))
    assert back["eval"]["pass@1"] == 0.5 and math.isnan(back["eval"]["self_correction_rate"])
    assert back["eval"]["max"] == math.inf and back["list"] == [-math.inf, 1, "a"]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from r1jax import fileio

    path = tmp_path / "sub" / "out.jsonl"
    fileio.atomic_write_jsonl(path, [{"a": "é"}, {"b": 2}])
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(path, b"new")
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temporary left behind
