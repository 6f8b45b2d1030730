"""A real-size GRPO run on this CPU: Qwen2.5-0.5B's shape, random weights, the real preset path, time and memory.

    nice -n 10 python experiments/real_size_run.py             # 24 layers, 2x4 → benchmarks/real_size_run.json
    nice -n 10 python experiments/real_size_run.py --mesh none --devices 1 --json benchmarks/real_size_run_1device.json
    nice -n 10 python experiments/real_size_run.py --layers 2 --json /tmp/small.json     # Qwen2.5-0.5B widths
    nice -n 10 python experiments/real_size_run.py --layers 2 --vocab 8192 --json /tmp/smoke.json   # ~3 min
    python experiments/real_size_run.py --predict-only --mesh 2x4 --json /tmp/p.json     # memory only, ~1 min

1. Before the run (skip with --no-predict) a subprocess compiles the GRPO update
   and the log-prob pass on abstract inputs of the run's shapes, settings and mesh
   (no weights) and sums XLA's per-device memory_analysis over the devices. When
   that predicted peak passes --max-rss-gib the run is not started (--force
   starts it anyway); --predict-only stops there. Measured peaks have come out
   1-3 GiB above the prediction (the runtime, the sampler, host copies).
2. tools/make_random_hf.py (in a spawned process, so its memory is returned)
   writes runs/real05_hf/: config.json + model.safetensors by r1jax.hf.save_hf
   (bf16, as Qwen2.5 ships), a byte-level BPE tokenizer.json with Qwen's special
   tokens, and data/{train,test}.jsonl in the GSM8K layout (4 test problems).
   An existing folder of the same shape is reused (--remake to rewrite it).
3. experiments/r1_zero.py runs as a subprocess with JAX_NUM_CPU_DEVICES=8:
       r1_zero.py --preset qwen2.5-1.5b --mesh 2x4 --workdir runs/real05
           --set init_from=runs/real05_hf --set train_jsonl=… --set test_jsonl=…
           --set rl_steps=2 --set grpo.sampling.max_new_tokens=16 --set grpo.num_minibatches=1
           --set grpo.group_size=4 --set grpo.prompts_per_step=2 --set eval_k=1 --set eval_every=0
   i.e. the preset's model execution (its `init` settings), optimizer and loss (KL
   β 0.001 with a reference copy, AdamW, logprob_chunk 512) with a small batch (8
   rows) and 16 new tokens; more overrides with --set. The workdir is removed
   first (a leftover one would be resumed). The subprocess is r1_zero.py itself,
   run through `runpy` after wrapping GRPOTrainer.step and each phase's run to
   append their wall times to workdir/timings.jsonl: RLPhase logs no time/*
   metrics to metrics.jsonl, so step and sampling seconds come from there
   (metrics.jsonl's "time" stamps are kept as a check). Its output goes to
   workdir/real_size_run.log.
4. Peak RSS: the subprocess's /proc VmHWM (sampled every 0.5 s with psutil; the
   reward-pool workers are counted separately), and getrusage(RUSAGE_CHILDREN).
   The run is killed (its process group: the run and its reward workers) when
   their RSS passes --max-rss-gib or the machine's MemAvailable falls under
   --min-available-gib, and the phase it was in is recorded.
   Writes --json and prints a table: params, mesh, per-step seconds (sampling vs
   update), per-phase seconds, peak RSS, wall time, the load average meanwhile.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# order matters: --set checks each GRPOConfig as it goes, so the minibatch count must shrink before the batch
SETTINGS = ["rl_steps=2", "grpo.sampling.max_new_tokens=16", "grpo.num_minibatches=1", "grpo.group_size=4",
            "grpo.prompts_per_step=2", "eval_k=1", "eval_every=0"]
TIMINGS = "timings.jsonl"
GIB = 1024 ** 3


# ------------------------------------------------------------------ the subprocess: r1_zero.py with timers
def _child(argv: list[str]) -> None:
    """Run experiments/r1_zero.py with `argv`, appending step and phase wall times to <workdir>/timings.jsonl."""
    import runpy

    workdir = argv[argv.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, TIMINGS)

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps({"time": time.time(), **record}) + "\n")

    from r1jax.phases import EvalPhase, InitFromPhase, RLPhase
    from r1jax.rl.loop import GRPOTrainer

    step = GRPOTrainer.step

    def timed_step(self, *args, **kwargs):
        m = step(self, *args, **kwargs)
        log({"event": "rl_step", "rl_step": self.rl_step,
             **{k: v for k, v in m.items() if k.startswith(("time/", "throughput/", "reward/mean",
                                                            "completion/length_mean"))}})
        return m

    GRPOTrainer.step = timed_step
    for cls in (InitFromPhase, EvalPhase, RLPhase):
        def timed_run(self, env, carry, state, cursor, _run=cls.run):
            log({"event": "phase_start", "phase": self.name})
            t0 = time.perf_counter()
            carry = _run(self, env, carry, state, cursor)
            log({"event": "phase_end", "phase": self.name, "seconds": time.perf_counter() - t0})
            return carry
        cls.run = timed_run
    sys.argv = [str(ROOT / "experiments" / "r1_zero.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _child_predict(layers: int | None, vocab: int | None, mesh_spec: str, prompt_len: int,
                   overrides: list[str]) -> None:
    """Print (JSON) XLA's memory_analysis of the run's GRPO update and log-prob pass, from shapes only."""
    import jax
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import make_random_hf
    from r1jax import sharding
    from r1jax.model import Transformer
    from r1jax.phases.runner import abstract_params
    from r1jax.cli import apply_overrides
    from r1jax.recipes import r1_zero
    from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step, make_logps_fn
    from r1jax.train.optim import init_train_state, make_optimizer

    preset = apply_overrides(r1_zero.PRESETS["qwen2.5-1.5b"], overrides)  # the run's settings, as r1_zero.py
    cfg = make_random_hf.model_config("qwen2.5-0.5b", layers, vocab)
    if getattr(preset, "init", None) is not None:  # the preset's Execution (dtype, remat, scan_layers) for init_from
        cfg = preset.init.apply(cfg)
    grpo = preset.grpo
    rows, width = grpo.group_size * grpo.prompts_per_step, -(-prompt_len // 32) * 32
    mesh = sharding.single_device_mesh() if mesh_spec == "none" else sharding.make_mesh(mesh_spec)
    out = {"rows": rows, "prompt_width": width, "devices": len(jax.devices()),
           "execution": {k: getattr(cfg, k) for k in ("param_dtype", "dtype", "remat", "scan_layers", "attention")
                         if hasattr(cfg, k)}}
    with sharding.use_mesh(mesh):
        tx = make_optimizer(preset.rl_optimizer)
        state = sharding.abstract_with_shardings(
            jax.eval_shape(lambda p: init_train_state(p, tx), abstract_params(cfg)), mesh, cfg)
        model = Transformer(cfg)
        update = make_grpo_step(model, tx, grpo, None, sharding.tree_shardings(state, mesh, cfg=cfg))
        logps = make_logps_fn(model, grpo.logprob_chunk)

        def rows_of(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(shape, mesh))

        b, p, t = rows, width, grpo.sampling.max_new_tokens
        batch = GRPOBatch(rows_of((b, p), np.int32), rows_of((b, p), np.bool_), rows_of((b, t), np.int32),
                          rows_of((b, t), np.bool_), rows_of((b, t), np.float32), rows_of((b, t), np.float32),
                          rows_of((b, t), np.float32), rows_of((b,), np.float32))
        for name, fn, args in (("update", update, (state, batch)), ("logps", logps, (state.params, batch))):
            t0 = time.perf_counter()
            m = fn.lower(*args).compile().memory_analysis()
            n = len(jax.devices())
            out[name] = {"argument_gib": n * m.argument_size_in_bytes / GIB, "temp_gib": n * m.temp_size_in_bytes / GIB,
                         "output_gib": n * m.output_size_in_bytes / GIB, "alias_gib": n * m.alias_size_in_bytes / GIB,
                         "compile_s": time.perf_counter() - t0}
    u, lp = out["update"], out["logps"]
    ref = lp["argument_gib"] if grpo.kl_beta else 0.0  # the reference params, held beside the train state
    # the update's output aliases its donated input; the reference copy lives beside it
    out["predicted_peak_gib"] = max(u["argument_gib"] + u["temp_gib"] + u["output_gib"] - u["alias_gib"] + ref,
                                    u["argument_gib"] + ref + lp["temp_gib"])
    print("PREDICT " + json.dumps(out))


# ------------------------------------------------------------------ memory sampling
class RSSSampler(threading.Thread):
    """Samples a process's RSS and VmHWM (and its children's RSS) every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.5, max_tree_bytes: float = math.inf,
                 min_available_bytes: float = 0.0):
        super().__init__(daemon=True)
        self.pid, self.period, self.stop = pid, period, threading.Event()
        self.max_tree_bytes, self.min_available_bytes = max_tree_bytes, min_available_bytes
        self.peak_rss = self.hwm = self.peak_children = self.peak_tree = 0
        self.min_available = math.inf
        self.killed: str | None = None
        self.loads: list[float] = []
        self.series: list[tuple[float, int, int]] = []  # (seconds since start, main RSS, children RSS)

    @staticmethod
    def _mem_available() -> float:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return math.inf

    def _kill(self, why: str) -> None:
        """SIGKILL the run's process group (the run and its reward workers: started by us, in their own session)."""
        self.killed = why
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _vm_hwm(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None
        t0 = time.time()
        proc = psutil.Process(self.pid) if psutil else None
        while not self.stop.is_set():
            try:
                if proc is not None:
                    rss = proc.memory_info().rss
                    kids = 0
                    for c in proc.children(recursive=True):
                        try:
                            kids += c.memory_info().rss
                        except psutil.Error:
                            pass
                else:
                    rss, kids = self._vm_rss(self.pid), 0
            except Exception:  # the process ended between two samples
                break
            self.hwm = max(self.hwm, self._vm_hwm(self.pid))
            self.peak_rss, self.peak_children = max(self.peak_rss, rss), max(self.peak_children, kids)
            self.peak_tree = max(self.peak_tree, rss + kids)
            self.series.append((round(time.time() - t0, 1), rss, kids))
            self.loads.append(os.getloadavg()[0])
            available = self._mem_available()
            self.min_available = min(self.min_available, available)
            if rss + kids > self.max_tree_bytes:
                self._kill(f"RSS {(rss + kids) / GIB:.2f} GiB passed the limit {self.max_tree_bytes / GIB:.1f} GiB")
                break
            if available < self.min_available_bytes:
                self._kill(f"MemAvailable {available / GIB:.2f} GiB fell under {self.min_available_bytes / GIB:.1f} GiB "
                           f"(run RSS {(rss + kids) / GIB:.2f} GiB)")
                break
            self.stop.wait(self.period)

    @staticmethod
    def _vm_rss(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise OSError(pid)


# ------------------------------------------------------------------ the parent
def _make_and_measure(folder: str, layers: int | None, vocab: int | None) -> dict:
    """make_random_hf's summary plus this (worker) process's peak RSS."""
    import make_random_hf

    summary = make_random_hf.make_random_hf(folder, shape="qwen2.5-0.5b", layers=layers, vocab=vocab)
    summary["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return summary


def _make_folder(folder: Path, layers: int | None, vocab: int | None, remake: bool) -> dict:
    """The HF folder's summary, writing it in a spawned process unless one of the same shape exists."""
    import multiprocessing as mp

    sys.path.insert(0, str(ROOT / "tools"))
    import make_random_hf

    summary_path = folder / "make_random_hf.json"
    want = make_random_hf.model_config("qwen2.5-0.5b", layers, vocab)
    if summary_path.exists() and not remake:
        summary = json.loads(summary_path.read_text())
        if summary.get("layers") == want.num_layers and summary.get("vocab_size") == want.vocab_size:
            summary["reused"] = True
            return summary
    shutil.rmtree(folder, ignore_errors=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        summary = pool.apply(_make_and_measure, (str(folder), layers, vocab))
    summary.pop("model", None)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    summary["reused"] = False
    return summary


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics_step_gaps(records: list[dict]) -> list[float]:
    """Seconds between consecutive metrics.jsonl records ending in each rl/ record (a check on the timers)."""
    gaps, prev = [], None
    for r in records:
        if prev is not None and any(k.startswith("rl/reward") for k in r):
            gaps.append(round(r["time"] - prev, 2))
        prev = r["time"]
    return gaps


def _predict(args, env: dict) -> dict | None:
    """XLA's memory prediction for the run (subprocess with the run's device count); None if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child-predict", str(args.layers or 0),
               str(args.vocab or 0), args.mesh, str(args.prompt_len), *SETTINGS, *args.extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("PREDICT "):
            return json.loads(line[len("PREDICT "):])
    print(f"memory prediction failed (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return 0
    if argv[:1] == ["--child-predict"]:
        layers, vocab, mesh, prompt_len = argv[1:5]
        _child_predict(int(layers) or None, int(vocab) or None, mesh, int(prompt_len), argv[5:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (Qwen2.5-0.5B widths kept)")
    parser.add_argument("--vocab", type=int, default=None, help="another vocabulary size (default 151936)")
    parser.add_argument("--hf-dir", default=None, help="where the random HF folder goes (default runs/real05_hf…)")
    parser.add_argument("--workdir", default=None, help="the run's workdir (default runs/real05…; removed first)")
    parser.add_argument("--mesh", default="2x4", help="r1_zero.py --mesh ('none': no --mesh, one device)")
    parser.add_argument("--devices", type=int, default=8, help="JAX_NUM_CPU_DEVICES of the run")
    parser.add_argument("--json", default=None, help="result file (default benchmarks/real_size_run.json for the "
                                                     "full shape on 2x4; required otherwise)")
    parser.add_argument("--remake", action="store_true", help="rewrite the HF folder even if one exists")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="kill the run past this RSS (run + workers)")
    parser.add_argument("--min-available-gib", type=float, default=1.5,
                        help="kill the run when the machine's MemAvailable falls under this")
    parser.add_argument("--no-predict", action="store_true", help="skip XLA's memory prediction")
    parser.add_argument("--predict-only", action="store_true", help="only XLA's memory prediction (no weights)")
    parser.add_argument("--force", action="store_true", help="run even when the prediction passes --max-rss-gib")
    parser.add_argument("--prompt-len", type=int, default=108, help="prompt tokens assumed by the prediction")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="FIELD=VALUE",
                        help="more r1_zero.py overrides (after the ones above)")
    args = parser.parse_args(argv)
    default_run = args.layers is None and args.vocab is None and args.mesh == "2x4" and args.devices == 8
    suffix = "" if default_run else (f"_L{args.layers or 24}" + (f"_V{args.vocab}" if args.vocab else "")
                                     + f"_{args.mesh}")
    if args.json is None and not default_run:
        parser.error("--json is required unless the run is the default one (24 layers, 2x4, 8 devices)")
    out_json = Path(args.json or ROOT / "benchmarks" / "real_size_run.json")
    full_shape = args.layers is None and args.vocab is None
    hf_dir = Path(args.hf_dir or ROOT / "runs" / ("real05_hf" if full_shape else
                                                  f"real05_hf_L{args.layers or 24}_V{args.vocab or 151936}"))
    workdir = Path(args.workdir or ROOT / "runs" / f"real05{suffix}")
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(args.devices))
    t_start = time.time()

    prediction = None
    if not args.no_predict:
        prediction = _predict(args, env)
        if prediction:
            print(f"XLA memory prediction ({args.mesh}, {args.devices} devices): "
                  f"update {prediction['update']['argument_gib']:.2f} GiB args + {prediction['update']['temp_gib']:.2f}"
                  f" GiB temp, log-probs {prediction['logps']['temp_gib']:.2f} GiB temp; "
                  f"peak ≈ {prediction['predicted_peak_gib']:.1f} GiB", flush=True)
        refused = (prediction is not None and not args.predict_only and not args.force
                   and prediction["predicted_peak_gib"] > args.max_rss_gib)
        if refused:
            print(f"not run: XLA predicts {prediction['predicted_peak_gib']:.1f} GiB, over --max-rss-gib "
                  f"{args.max_rss_gib:.0f} (--force runs it anyway, killed at the limit)", flush=True)
        if args.predict_only or refused:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps({
                "what": "not run: XLA's predicted peak is over max_rss_gib" if refused else
                "XLA memory prediction only (no run)", "mesh": args.mesh, "devices": args.devices,
                "layers": args.layers or 24, "vocab": args.vocab or 151936, "overrides": [*SETTINGS, *args.extra],
                "max_rss_gib": args.max_rss_gib, "xla_prediction": prediction}, indent=1) + "\n")
            return 1 if refused or not prediction else 0

    t_make = time.time()
    folder = _make_folder(hf_dir, args.layers, args.vocab, args.remake)
    make_seconds = time.time() - t_make
    print(f"HF folder {hf_dir}: {folder['params'] / 1e6:.1f}M params, tokenizer {folder['tokenizer_vocab']} "
          f"tokens, {'reused' if folder['reused'] else f'written in {make_seconds:.0f} s'}", flush=True)

    shutil.rmtree(workdir, ignore_errors=True)
    overrides = [f"init_from={hf_dir}", f"train_jsonl={folder['train_jsonl']}",
                 f"test_jsonl={folder['test_jsonl']}", *SETTINGS, *args.extra]
    run_args = ["--preset", "qwen2.5-1.5b", *([] if args.mesh == "none" else ["--mesh", args.mesh]),
                "--workdir", str(workdir)]
    for o in overrides:
        run_args += ["--set", o]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *run_args]
    shown = "JAX_NUM_CPU_DEVICES=%d python experiments/r1_zero.py %s" % (args.devices, " ".join(run_args))
    print("run: " + shown, flush=True)
    workdir.mkdir(parents=True)
    log_path = workdir / "real_size_run.log"  # the run's stdout and stderr
    t_run = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler = RSSSampler(proc.pid, max_tree_bytes=args.max_rss_gib * GIB,
                             min_available_bytes=args.min_available_gib * GIB)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
    run_seconds = time.time() - t_run
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    timings = _read_jsonl(workdir / TIMINGS)
    steps = [r for r in timings if r["event"] == "rl_step"]
    phases = {r["phase"]: round(r["seconds"], 1) for r in timings if r["event"] == "phase_end"}
    started = [r["phase"] for r in timings if r["event"] == "phase_start"]
    unfinished = [p for p in started if p not in phases]
    metrics = _read_jsonl(workdir / "metrics.jsonl")
    step_rows = [{"rl_step": s["rl_step"], "step_s": round(s["time/step_s"], 2),
                  "sample_s": round(s["time/sample_s"], 2),
                  "update_s": round(s["time/step_s"] - s["time/sample_s"], 2),
                  "tokens_per_s": round(s["throughput/tokens_per_s"], 2),
                  "completion_length_mean": s.get("completion/length_mean")} for s in steps]
    phase_starts = {r["phase"]: r["time"] for r in timings if r["event"] == "phase_start"}
    result = {
        "what": "GRPO through the qwen2.5-1.5b preset path (init_from a save_hf folder) on a Qwen2.5-0.5B-shaped "
                "random model",
        "command": shown, "returncode": rc, "killed": sampler.killed,
        "stopped_in_phase": None if not rc else unfinished[-1] if unfinished else
        f"after {started[-1]} (the runner's checkpoint at its end, or the next phase's set-up)" if started else
        "before the first phase",
        "model": {k: folder[k] for k in ("shape", "layers", "vocab_size", "tokenizer_vocab", "params", "dtype",
                                         "weights_bytes")},
        "mesh": args.mesh, "devices": args.devices,
        "batch": {"prompts_per_step": 2, "group_size": 4, "rows": 8, "max_new_tokens": 16, "num_minibatches": 1},
        "rl_steps": step_rows,
        "metrics_jsonl_gaps_s": _metrics_step_gaps(metrics),
        "phases_s": phases,
        "phase_start_s": {k: round(v - t_run, 1) for k, v in phase_starts.items()},
        "xla_prediction": prediction,
        "peak_rss_gib": round(max(sampler.hwm, sampler.peak_rss) / GIB, 2),
        "peak_rss_sampled_gib": round(sampler.peak_rss / GIB, 2),
        "peak_reward_workers_rss_gib": round(sampler.peak_children / GIB, 2),
        "peak_tree_rss_gib": round(sampler.peak_tree / GIB, 2),
        "getrusage_children_maxrss_gib": round(children_maxrss / GIB, 2),
        "min_mem_available_gib": round(sampler.min_available / GIB, 2) if sampler.min_available < math.inf else None,
        "make_hf_maxrss_gib": None if folder["reused"] else round(folder["maxrss_bytes"] / GIB, 2),
        "make_hf_seconds": round(make_seconds, 1), "hf_folder_reused": folder["reused"],
        "run_wall_s": round(run_seconds, 1), "total_wall_s": round(time.time() - t_start, 1),
        "load_avg_1min": {"mean": round(sum(sampler.loads) / max(1, len(sampler.loads)), 2),
                          "max": round(max(sampler.loads, default=0.0), 2)},
        "rss_series_s_main_workers": sampler.series[:: max(1, len(sampler.series) // 200)],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "log": str(log_path),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n| {'quantity':<34} | value |\n|{'-' * 36}|-------|")
    rows = [("params", f"{folder['params'] / 1e6:.1f}M ({folder['layers']} layers, vocab {folder['vocab_size']})"),
            ("mesh", f"{args.mesh} ({args.devices} CPU devices)")]
    for s in step_rows:
        rows.append((f"RL step {s['rl_step']} s (sampling + update)",
                     f"{s['step_s']:.1f} ({s['sample_s']:.1f} + {s['update_s']:.1f})"))
    rows += [(f"phase {name} s", f"{sec:.1f}") for name, sec in phases.items()]
    if prediction:
        rows.append(("XLA-predicted peak GiB", f"{prediction['predicted_peak_gib']:.1f}"))
    rows += [("peak RSS GiB (run process)", f"{result['peak_rss_gib']:.2f}"),
             ("peak RSS GiB (reward workers)", f"{result['peak_reward_workers_rss_gib']:.2f}"),
             ("run wall s", f"{run_seconds:.0f}"), ("total wall s (with HF folder)", f"{result['total_wall_s']:.0f}"),
             ("1-min load average (mean, max)", f"{result['load_avg_1min']['mean']}, {result['load_avg_1min']['max']}")]
    if sampler.killed:
        rows.append(("killed", f"{sampler.killed} in phase {result['stopped_in_phase']}"))
    for name, value in rows:
        print(f"| {name:<34} | {value} |")
    print(f"\nwrote {out_json} (log {log_path}); exit status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
