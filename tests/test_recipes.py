"""Recipes end to end at smoke size: a model loaded from a Hugging Face folder, and distillation vs RL alone."""
import dataclasses
import json
import pathlib
import random

import jax
import numpy as np
import pytest

from r1jax.config import GRPOConfig, ModelConfig, SamplingSettings
from r1jax.data import R1_ZERO, ArithmeticConfig, generate_arithmetic, worked_solution
from r1jax.hf import load_hf, save_hf
from r1jax.hf_tokenizer import HFTokenizer
from r1jax.metrics import read_metrics
from r1jax.model import init_params, unstack_layers
from r1jax.phases import InitFromPhase, Runner, StopRun, source_model_config
from r1jax.recipes import distill, r1_zero

from bpe_tokenizer import write_bpe_tokenizer

GSM8K = pathlib.Path(__file__).parent / "fixtures" / "eval" / "gsm8k_tiny.jsonl"
GRPO = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=8), logprob_chunk=8,
                  kl_beta=0.0)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A Qwen2-layout folder written by save_hf, with a byte-level BPE tokenizer.json of the same vocabulary."""
    path = tmp_path_factory.mktemp("hf_model")
    questions = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines() if line.strip()]
    vocab = write_bpe_tokenizer(path, questions * 3, 384, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    cfg = ModelConfig(vocab_size=vocab, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      head_dim=16, mlp_dim=64, max_len=256, qkv_bias=True)
    save_hf(path, cfg, init_params(cfg, jax.random.key(3)))
    return path


def test_real_preset_path_loads_a_hf_folder_trains_and_resumes(hf_folder, tmp_path):
    cfg = dataclasses.replace(r1_zero.PRESETS["qwen2.5-1.5b"], init_from=str(hf_folder), train_jsonl=str(GSM8K),
                              test_jsonl=str(GSM8K), rl_steps=2, grpo=GRPO, eval_every=0, eval_k=1)
    r1_zero.check_config(cfg, "qwen2.5-1.5b")
    workdir = tmp_path / "run"
    runner = r1_zero.build(cfg, str(workdir))
    assert [p.name for p in runner.phases] == ["init", "base_eval", "rl", "final_eval"]
    with pytest.raises(StopRun):
        runner.run(stop_at_step=2)  # base_eval and one RL step, then "killed"
    assert (workdir / "tokenizer.json").exists()
    carry = r1_zero.build(cfg, str(workdir)).run()  # resumes: the tokenizer comes back from the workdir copy
    assert isinstance(carry.tokenizer, HFTokenizer)
    assert carry.model_cfg == source_model_config(str(hf_folder), cfg.init)
    assert (carry.model_cfg.dtype, carry.model_cfg.remat, carry.model_cfg.scan_layers) == ("bfloat16", "full", True)
    assert set(carry.results) >= {"init", "base_eval", "final_eval"}
    steps = [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if "rl/reward/mean" in r]
    assert steps == [1, 2]
    _, loaded = load_hf(hf_folder)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a, np.float32) - np.asarray(b)).max()),
                         unstack_layers(carry.params), loaded)  # the run keeps its layers scanned
    assert max(jax.tree.leaves(moved)) > 0  # RL changed the loaded weights


def test_init_from_names_the_config_differences_and_missing_sources(hf_folder, tmp_path):
    other = dataclasses.replace(source_model_config(str(hf_folder)), num_layers=3)
    with pytest.raises(ValueError, match="num_layers: 2 vs 3"):
        Runner(str(tmp_path / "a"), other, [InitFromPhase(str(hf_folder))]).run()
    with pytest.raises(FileNotFoundError, match="neither an r1jax run"):
        source_model_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        source_model_config(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="experiments/r1_zero.py"):
        distill.check_teacher(distill.DistillConfig(teacher=str(tmp_path)))


TASK = ArithmeticConfig(num_ops=1, max_value=9, ops=("+",))
SMOKE = r1_zero.R1ZeroConfig(
    task=TASK, train_problems=40, test_problems=4, vocab_size=400, pretrain_steps=4, pretrain_batch=4, seq_len=224,
    model=ModelConfig(vocab_size=400, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      mlp_dim=64, max_len=256),
    rl_steps=1, grpo=dataclasses.replace(GRPO, sampling=SamplingSettings(max_new_tokens=16), logprob_chunk=16),
    eval_every=0, eval_k=1)


def test_distill_stages_run_and_compare(tmp_path):
    teacher = tmp_path / "teacher"  # a stand-in for an RL-trained teacher: the smoke base alone
    train, _ = r1_zero.problems(SMOKE)
    Runner(str(teacher), SMOKE.model, r1_zero.base_phases(SMOKE, train)[1]).run()
    cfg = distill.DistillConfig(
        teacher=str(teacher), data=SMOKE, student=dataclasses.replace(SMOKE.model, embed_dim=16, head_dim=8),
        student_pretrain_steps=3, trace_problems=6, trace_k=2, distill_steps=2, rl_steps=1, kd_alpha=0.5,
        kd_temperature=2.0)
    workdir = tmp_path / "distill"
    runners = distill.build(cfg, str(workdir))
    assert list(runners) == list(distill.STAGES)
    runners["student_base"].run()
    traces = runners["teacher_traces"].run()
    path = workdir / "teacher_traces" / "traces.jsonl"
    assert len(path.read_text().splitlines()) == traces.results["traces"]["kept"]
    # a smoke-size teacher rarely solves anything: stand-in traces let the student stages run
    rng = random.Random(0)
    rows = [{"id": p.id, "prompt": R1_ZERO.render(p.question), "completion": " " + worked_solution(p, rng).render()}
            for p in generate_arithmetic(TASK, "train", 8, seed=0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = distill.run(cfg, str(workdir))  # finished stages are only reloaded
    kd = [r for r in read_metrics(workdir / "distilled" / "metrics.jsonl") if "distill/kl" in r]
    assert kd and all(np.isfinite(r["distill/kl"]) for r in kd)
    assert all("final_eval" in results[s] and results[s]["seconds"] > 0 for s in distill.STAGES)
    table = distill.report(results, str(workdir))
    assert (workdir / "summary.md").read_text().strip() == table.strip()
    assert "student, distilled" in table and "student, RL alone" in table and "teacher traces kept" in table
    # the distilled student starts from the student base: same tokenizer, same architecture
    assert (workdir / "distilled" / "tokenizer.model").read_bytes() == (teacher / "tokenizer.model").read_bytes()


def test_a_run_records_its_task_and_evaluate_reads_back_the_same_problems(tmp_path):
    from test_experiments import _load

    evaluate = _load("evaluate")
    cfg = dataclasses.replace(SMOKE, seed=3, test_problems=7)
    runner = r1_zero.build(cfg, str(tmp_path))
    assert not (tmp_path / r1_zero.TASK_FILE).exists()  # building has no side effect: the run writes it
    (tmp_path / r1_zero.TASK_FILE).write_text(runner.files[r1_zero.TASK_FILE])
    recorded = evaluate.EvalConfig.from_task_file(str(tmp_path / r1_zero.TASK_FILE))
    assert recorded.arithmetic == cfg.task and recorded.problems == 7 and recorded.seed == 3
    assert recorded.sampling.max_new_tokens == cfg.grpo.sampling.max_new_tokens
    assert recorded.arithmetic != evaluate.EvalConfig().arithmetic  # not evaluate's own defaults
    assert generate_arithmetic(recorded.arithmetic, "test", recorded.problems, recorded.seed) == \
        tuple(r1_zero.problems(cfg)[1])
    jsonl = dataclasses.replace(cfg, train_jsonl=str(GSM8K), test_jsonl=str(GSM8K))
    (tmp_path / r1_zero.TASK_FILE).write_text(r1_zero.task_record(jsonl))
    assert evaluate.EvalConfig.from_task_file(str(tmp_path / r1_zero.TASK_FILE)).test_jsonl == str(GSM8K.resolve())
    (tmp_path / r1_zero.TASK_FILE).write_text('{"task": "arithmetic"}')
    with pytest.raises(ValueError, match="task.json: not a task file"):
        evaluate.EvalConfig.from_task_file(str(tmp_path / r1_zero.TASK_FILE))


def test_the_same_run_twice_gives_identical_metrics(tmp_path):
    """Determinism on one machine: every logged number but wall times equal, bit for bit."""
    def numbers(workdir):
        return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/") and "throughput" not in k
                 and not k.endswith("/seconds")} for r in read_metrics(workdir / "metrics.jsonl")]

    first, second = tmp_path / "a", tmp_path / "b"
    r1_zero.build(SMOKE, str(first)).run()
    r1_zero.build(SMOKE, str(second)).run()
    assert json.loads((first / r1_zero.TASK_FILE).read_text())["problems"] == SMOKE.test_problems  # written by run
    a, b = numbers(first), numbers(second)
    assert len(a) > 3 and a == b


def test_the_countdown_preset_trains_on_countdown_with_its_own_check_and_records_it(tmp_path):
    from r1jax.data import CountdownConfig
    from r1jax.evaluate import lenient_correctness
    from test_experiments import _load

    cfg = dataclasses.replace(r1_zero.PRESETS["tiny-countdown"], train_problems=30, test_problems=5)
    train, test = r1_zero.problems(cfg)
    assert {p.task for p in train + test} == {"countdown"} and all(len(p.numbers) == 3 for p in train)
    corpus = r1_zero.base_corpus(cfg, train)
    assert all("using the numbers" in c for _, c in corpus)
    rewards = r1_zero.default_rewards(cfg)
    rng = random.Random(0)
    right = [worked_solution(p, rng).render() for p in train[:5]]
    wrong = [worked_solution(p, rng, error_rate=1.0).render() for p in train[:5]]
    columns = dict(numbers=[p.numbers for p in train[:5]], target=[p.target for p in train[:5]])
    assert rewards["accuracy"].fn([""] * 5, right, **columns) == [1.0] * 5
    assert rewards["accuracy"].fn([""] * 5, wrong, **columns) == [0.0] * 5  # no partial credit: format pays form
    prose = [f" {worked_solution(p, rng).reasoning}\nThe answer is {worked_solution(p, rng).answer}." for p in test]
    _, lenient, _ = lenient_correctness(test, [""] * 5, prose, 1, np.zeros((5, 1), bool))
    assert lenient.all()  # the equation read from the prose, checked by the Countdown rule
    recorded = _load("evaluate").EvalConfig.from_task_file(_write_task(tmp_path, cfg))
    assert recorded.task == "countdown" and recorded.countdown == cfg.countdown == CountdownConfig(
        min_numbers=3, max_numbers=3, max_number=20, max_target=60)


def _write_task(tmp_path, cfg):
    path = tmp_path / r1_zero.TASK_FILE
    path.write_text(r1_zero.task_record(cfg))
    return str(path)


def test_lora_grpo_resumes_exactly_and_hands_on_folded_params(tmp_path):
    """--set lora.rank=4: adapters trained on the frozen base; a run killed inside the RL phase resumes to
    the uninterrupted run's metrics and params; later phases see plain params with the adapters folded in."""
    from r1jax.config import LoRAConfig
    from r1jax.lora import count

    cfg = dataclasses.replace(SMOKE, rl_steps=3, checkpoint_every=1, lora=LoRAConfig(rank=4, targets="attention"))
    whole = r1_zero.build(cfg, str(tmp_path / "whole")).run()
    pretrain_steps = cfg.pretrain_steps
    with pytest.raises(StopRun):
        r1_zero.build(cfg, str(tmp_path / "killed")).run(stop_at_step=pretrain_steps + 2)  # inside the RL phase
    resumed = r1_zero.build(cfg, str(tmp_path / "killed")).run()

    def numbers(workdir):
        return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")}
                for r in read_metrics(workdir / "metrics.jsonl")]

    assert numbers(tmp_path / "whole") == numbers(tmp_path / "killed")
    assert jax.tree.structure(whole.params) == jax.tree.structure(init_params(cfg.model, jax.random.key(0)))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    rl = whole.results["rl"]
    # attention only, rank 4: A [32, 4] + B [4, 2·16] (q), [4, 16] (k, v: 1 kv head), A [2, 16, 4] + B [4, 32] (o)
    per_layer = (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 16) + (32 * 4 + 4 * 32)
    assert rl["lora/trainable_params"] == 2 * per_layer and rl["lora/total_params"] == count(whole.params)


def test_every_recipe_reports_from_its_results_into_its_workdir(tmp_path):
    import inspect

    from r1jax.recipes import code_rl, compare, r1, r1_zero, sweep

    for recipe in (code_rl, compare, distill, r1, r1_zero, sweep):  # one signature: (results, workdir) -> markdown
        assert list(inspect.signature(recipe.report).parameters) == ["results", "workdir"], recipe.__name__
    ev = {"pass@1": 0.25, "cons@4": 0.5, "format": 1.0, "length_mean": 40.0}
    table = r1.report({"base_eval": ev, "final_eval": ev, "rejection_sampling": {"kept": 3, "sampled": 8}},
                      str(tmp_path))
    assert "| final | 0.250 | 0.500 | 1.000 | 40.0 |" in table and "kept 3 of 8" in table
    assert (tmp_path / "summary.md").read_text().strip() == table.strip()


def test_lora_from_the_command_line_reaches_every_trained_stage_of_every_recipe(tmp_path, monkeypatch):
    from r1jax import phases
    from r1jax.cli import apply_overrides
    from r1jax.errors import UsageError
    from r1jax.phases import RLPhase, SFTPhase
    from r1jax.recipes import code_rl, r1

    flags = ["lora.rank=16", "lora.targets=all-linear"]
    (tmp_path / "teacher" / "checkpoints").mkdir(parents=True)  # check_teacher looks for a run there
    monkeypatch.setattr(phases, "source_model_config", lambda source: SMOKE.model)  # no teacher trained here
    runners = {
        "r1_zero": [r1_zero.build(apply_overrides(SMOKE, flags), str(tmp_path / "z"))],
        "r1": [r1.build(apply_overrides(r1.R1Config(base=SMOKE), flags), str(tmp_path / "r1"))],
        "distill": list(distill.build(apply_overrides(distill.DistillConfig(teacher=str(tmp_path / "teacher"),
                                                                            data=SMOKE), flags),
                                      str(tmp_path / "d")).values()),
        "code_rl": [code_rl.build(apply_overrides(code_rl.CodeRLConfig(), flags), str(tmp_path / "c"))],
    }
    for name, rs in runners.items():
        trained = {p.name: p.lora.rank for r in rs for p in r.phases if isinstance(p, (RLPhase, SFTPhase))}
        adapted = {n for n, rank in trained.items() if rank == 16}
        assert any(n.endswith("rl") for n in adapted), (name, trained)
        assert "pretrain" not in adapted, (name, trained)  # a base is trained whole
    assert set(n for n, r in {p.name: p.lora.rank for p in runners["r1"][0].phases
                              if isinstance(p, (RLPhase, SFTPhase))}.items() if r) == {
        "cold_start", "reasoning_rl", "sft", "all_rl"}
    with pytest.raises(UsageError, match="set lora.rank"):  # the nested one would be ignored: an error, not silence
        r1.build(apply_overrides(r1.R1Config(base=SMOKE), ["base.lora.rank=8"]), str(tmp_path / "bad"))
