"""The HTML report: one offline file whose script, run by a real (headless) Chromium, draws the curves,
the flags and the rollout browser with coloured tokens, without console errors."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from r1jax.report import load_run, rl_flags, write_report
from r1jax.report.page import pick_steps, report_data

from report_helpers import console_errors, open_in_chromium, record, series, write_workdir

STEPS = 20
GOLDS = ["3", "5", "9", "12"]


def _run_dir(tmp_path):
    """An RL phase (truncation surges at step 10: one flag fires) with 3 saved steps, and an eval phase."""
    curves = {"reward/mean": list(np.linspace(0.3, 1.2, STEPS)), "reward/accuracy": list(np.linspace(0.1, 0.4, STEPS)),
              "reward/format": list(np.linspace(0.2, 0.8, STEPS)), "completion/length_mean": [60.0] * STEPS,
              "completion/truncated_frac": [0.0] * 10 + [0.5] * 10, "entropy": list(np.linspace(0.9, 0.6, STEPS)),
              "groups/informative": [3.0] * STEPS, "groups/sampled": [4.0] * STEPS}
    recs = []
    for step in (0, 10, 19):
        texts = [f"<think> {a} + 0 = {a} 🙂 </think> <answer> {a if i % 2 else int(a) + 1} </answer>"
                 for a in GOLDS for i in range(4)]  # 🙂: one token, two UTF-16 units in JavaScript
        rec = record(step, texts, GOLDS, {"accuracy": [float(i % 2) for i in range(16)], "format": [1.0] * 16},
                     truncated=[step >= 10 and i % 4 == 0 for i in range(16)])
        mask = rec.token_mask_NxT()
        rec.tokens["logp"] = np.where(mask, -np.linspace(0.0, 8.0, mask.shape[1])[None], 0.0).astype(np.float32)
        rec.tokens["ratio"] = np.where(mask, 1.0, 0.0).astype(np.float32)
        rec.tokens["ratio"][2, :3] = 1.6  # row 2 leaves the clip range
        recs.append(rec)
    extra = {"final_eval/pass@1": {STEPS: 0.4}, "final_eval/cons@4": {STEPS: 0.5},
             "rl/eval/pass@1": {0: 0.1, 10: 0.3}}
    return write_workdir(tmp_path / "run", series(curves), recs, extra), recs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    workdir, recs = _run_dir(tmp_path)
    return write_report(workdir), workdir, recs, tmp_path


def _data(html: str) -> dict:
    payload = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(payload)


def test_the_report_is_one_file_with_nothing_to_fetch(report):
    path, workdir, _, _ = report
    html = open(path, encoding="utf-8").read()
    assert path == str(workdir / "report.html")
    assert not re.search(r"<script[^>]+src=|<link|<img|<iframe|url\(", html)
    assert not re.search(r"https?://", html.replace("http://www.w3.org/2000/svg", ""))  # the SVG namespace name only
    data = _data(html)
    assert [p["name"] for p in data["phases"]] == ["rl", "final_eval"]
    assert set(data["phases"][0]["metrics"]) >= {"reward/mean", "completion/truncated_frac", "eval/pass@1"}
    assert [r["step"] for r in data["rollouts"]] == [0, 10, 19] and len(html) < 5e6


def test_flags_and_eval_tables_are_in_the_data(report):
    _, workdir, _, _ = report
    data = _data(open(workdir / "report.html", encoding="utf-8").read())
    fired = [f for f in data["flags"] if f["fired"]]
    assert [f["name"] for f in fired] == ["length_explosion"] and fired[0]["step"] == 11
    assert fired[0]["evidence"][:3] == ["19:0", "19:4", "19:8"]
    tables = {t["phase"]: t for t in data["evals"]}
    assert tables["rl"]["columns"] == ["pass@1"] and tables["rl"]["rows"] == [[0, 0.1], [10, 0.3]]
    assert tables["final_eval"]["columns"] == ["pass@1", "cons@4"]


def test_embedded_steps_keep_flagged_ones_first_then_spread_out():
    saved = list(range(0, 40))
    assert pick_steps(saved, [17, 3, 17], 4) == [0, 3, 17, 39]
    assert pick_steps(saved, [], 3) == [0, 20, 39]
    assert pick_steps([5], [], 12) == [5] and pick_steps(saved, [99, 17], 1) == [17]


def test_max_steps_bounds_the_embedded_rollouts(report):
    _, workdir, _, _ = report
    run = load_run(workdir)
    data = report_data(run, rl_flags(run), max_steps=1)
    assert [r["step"] for r in data["rollouts"]] == [19]  # the flag's evidence step
    assert data["savedSteps"] == [0, 10, 19]


def test_a_workdir_without_metrics_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics.jsonl does not exist"):
        write_report(tmp_path)


def test_chromium_runs_the_page_and_draws_curves_flags_and_coloured_tokens(report):
    path, _, recs, tmp_path = report
    png = tmp_path / "report.png"
    dom, stderr = open_in_chromium(path, tmp_path, screenshot=png)
    assert 'id="report-ready"' in dom, stderr[-2000:]
    assert 'id="js-error"' not in dom and console_errors(stderr) == []
    assert len(re.findall(r'<path class="curve" d="M[\d.]+ [\d.]+L', dom)) == 9  # rl's 9 curves, drawn
    assert len(re.findall(r'<line class="flagline"', dom)) == 8  # the flag's step 11 on each but eval/pass@1 (0–10)
    assert re.search(r'id="flag-rl-length_explosion".*?>fired<', dom)
    shown = recs[-1]  # the browser opens on the last embedded step, coloured by log-prob
    spans = re.findall(r'<span class="tok[^"]*"[^>]* style="background: rgba\((\d+), (\d+), (\d+), ([\d.]+)\);', dom)
    assert len(spans) == int(shown.lengths_N.sum())
    assert dom.count(">🙂</span>") == shown.rows  # and the pieces after it still line up:
    after = r">🙂</span><span[^>]*> </span><span[^>]*>&lt;</span><span[^>]*>/</span>"
    assert len(re.findall(after, dom)) == shown.rows
    assert max(float(a) for *_, a in spans) > 0.8 and min(float(a) for *_, a in spans) == 0
    assert len(re.findall(r'class="tok out"', dom)) == 3  # row 2's ratio 1.6 is outside [0.8, 1.2]
    assert dom.count('class="badge warn">truncated<') == 4
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape == (1600, 1280, 3) and image.std() > 20
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    assert ((b > 150) & (r < 90) & (g < 140)).sum() > 200  # curve strokes (#2f6fd0)
    assert ((r > 200) & (g < 120) & (b < 120)).sum() > 200  # strongly coloured tokens (low log-prob)


def test_an_evidence_link_opens_its_step_and_marks_the_completion(report):
    path, _, _, tmp_path = report
    dom, _ = open_in_chromium(path + "#r-10-4", tmp_path)
    assert re.search(r'<div class="row target" id="r-10-4">', dom)
    assert 'id="r-10-0"' in dom and 'id="r-19-0"' not in dom  # the browser switched to step 10


def test_a_view_link_picks_step_colour_and_filter(report):
    path, _, recs, tmp_path = report
    dom, _ = open_in_chromium(path + "#step=10&colour=ent&show=truncated", tmp_path)
    rows = re.findall(r'<div class="row" id="r-(\d+)-(\d+)">', dom)
    assert rows == [("10", str(i)) for i in (0, 4, 8, 12)]  # step 10's truncated rows, one per group
    assert re.search(r'<span class="tok[^"]*"[^>]* style="background: rgba\(123, 63, 228, 0\.25\);', dom)  # H 1 of 3
