"""The phase runner: a run killed and resumed logs the same metrics as one left alone."""
import json
import random

import jax
import numpy as np
import pytest

from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
from r1jax.data import ArithmeticConfig, PromptTemplate, generate_arithmetic, worked_solution
from r1jax.metrics import MetricsWriter, read_metrics
from r1jax.phases import (Carry, EvalPhase, RejectionSamplingPhase, RLPhase, RunEnv, Runner, SFTPhase, StopRun,
                          TokenizerPhase)
from r1jax.phases import keep_trace, read_sft_jsonl
from r1jax.report import read_rollouts
from r1jax.rewards import WeightedReward, accuracy_reward, format_reward

TASK = ArithmeticConfig(num_ops=1, max_value=9, ops=("+",))
TEMPLATE = PromptTemplate("q", "Q: {prompt} A:")


def _problems(split="train", n=40):
    return generate_arithmetic(TASK, split, n, seed=0)


def _pairs():
    rng = random.Random(0)
    return [(TEMPLATE.render(p.question), " " + worked_solution(p, rng).render()) for p in _problems()]


def _phases():
    return [
        TokenizerPhase(texts=lambda: [a + b for a, b in _pairs()], vocab_size=300),
        SFTPhase("sft", _pairs, steps=7, batch_size=4, seq_len=256, log_every=1,
                 optimizer=OptimizerConfig(learning_rate=3e-3)),
        RLPhase("rl", _problems, {"accuracy": WeightedReward(accuracy_reward), "format": WeightedReward(format_reward)},
                TEMPLATE, steps=4, grpo=GRPOConfig(group_size=2, prompts_per_step=2, logprob_chunk=12, kl_beta=0.01,
                                                   sampling=SamplingSettings(max_new_tokens=12)),
                optimizer=OptimizerConfig(learning_rate=1e-3)),
        EvalPhase("eval", lambda: _problems("test", 4), TEMPLATE, SamplingSettings.for_evaluation(12), k=2),
    ]


CFG = ModelConfig.tiny(vocab_size=300, max_len=256)


def _run(workdir, stop_at_step=None):
    return Runner(str(workdir), CFG, _phases(), seed=3, checkpoint_every=3).run(stop_at_step=stop_at_step)


def _env(workdir, phase_name, metrics=None):
    """The environment a Runner gives a phase, for running one phase on its own."""
    from r1jax import sharding

    return RunEnv(str(workdir), 3, sharding.single_device_mesh(), 1, ckpt=None,
                  metrics=metrics).for_phase(0, phase_name)


def _logged(workdir):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(workdir / "metrics.jsonl")]


def _rollout_files(workdir):
    return {p.name: p.read_bytes() for p in sorted((workdir / "rollouts").iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    return workdir, _run(workdir)


def test_phases_run_end_to_end(reference):
    workdir, carry = reference
    logged = _logged(workdir)
    assert [r["step"] for r in logged if "sft/loss" in r] == list(range(7))
    assert [r["step"] for r in logged if "rl/reward/mean" in r] == list(range(7, 11))
    assert [r["step"] for r in logged if "eval/pass@1" in r] == [11]
    assert "eval" in carry.results and 0.0 <= carry.results["eval"]["pass@1"] <= 1.0
    assert (workdir / "eval.jsonl").exists() and (workdir / "tokenizer.model").exists()
    assert carry.files == {"tokenizer": str(workdir / "tokenizer.model"), "eval": str(workdir / "eval.jsonl")}
    assert carry.model_cfg.vocab_size == carry.tokenizer.vocab_size == carry.results["tokenizer"]["vocab_size"]
    assert any((workdir / "tensorboard").iterdir())


@pytest.mark.parametrize("stop_at", [5, 9])  # inside the SFT phase, inside the RL phase
def test_killed_and_resumed_run_logs_the_same_metrics(reference, tmp_path, stop_at):
    ref_dir, ref_carry = reference
    with pytest.raises(StopRun):
        _run(tmp_path, stop_at_step=stop_at)
    carry = _run(tmp_path)
    assert carry.results.keys() == ref_carry.results.keys()
    assert carry.files == {k: v.replace(str(ref_dir), str(tmp_path)) for k, v in ref_carry.files.items()}
    assert _logged(tmp_path) == _logged(ref_dir)
    assert _rollout_files(tmp_path) == _rollout_files(ref_dir)  # the saved rollouts too, byte for byte
    for a, b in zip(np.asarray(list(carry.params["embed"]["embedding"])), np.asarray(list(
            ref_carry.params["embed"]["embedding"]))):
        np.testing.assert_array_equal(a, b)


def test_rl_phase_saves_each_steps_rollouts_for_the_report(reference):
    workdir, carry = reference
    recs = read_rollouts(workdir)
    # the default RolloutLog: every 5th phase step and the last
    assert [r.step for r in recs] == [7, 10] and [r.phase_step for r in recs] == [0, 3]
    tok = carry.tokenizer
    for r in recs:
        mask = r.token_mask_NxT()
        assert r.rows == 4 and r.group_size == 2 and r.reward_names == ["accuracy", "format"]
        assert set(r.tokens) == {"logp", "old_logp", "ref_logp", "ratio", "entropy"}  # kl_beta > 0: ref saved
        assert r.texts == [tok.decode(row[:n]) for row, n in zip(r.tokens_NxT, r.lengths_N)]
        # old log-probs are the trainer's recomputation of the sampler's: equal up to float16
        np.testing.assert_allclose(r.tokens["old_logp"][mask], r.tokens["logp"][mask], atol=0.02)
        assert np.isfinite(r.tokens["ratio"][mask]).all() and (r.tokens["entropy"][mask] > 0).all()
        np.testing.assert_allclose(r.rewards_N, r.values_KxN.sum(0))
        assert not r.advantages_N.any() or np.ptp(r.rewards_N.reshape(-1, 2), axis=1).any()


def test_finished_run_does_nothing_more(reference):
    workdir, _ = reference
    before = (workdir / "metrics.jsonl").read_text()
    _run(workdir)
    assert (workdir / "metrics.jsonl").read_text() == before


def test_rejection_sampling_writes_clean_correct_traces(reference, tmp_path):
    workdir, carry = reference
    phase = RejectionSamplingPhase("rs", lambda: _problems("train", 8), TEMPLATE,
                                   SamplingSettings(max_new_tokens=40, temperature=0.7), k=2)
    with MetricsWriter(tmp_path) as metrics:
        out = phase.run(_env(tmp_path, "rs", metrics), carry, None, None)
    lines = (tmp_path / "rs.jsonl").read_text().splitlines()
    summary = out.results["rs"]
    assert out.files["rs"] == str(tmp_path / "rs.jsonl") and "rs" not in carry.results  # a new carry
    assert summary["kept"] == len(lines) and summary["sampled"] == 16
    for line in lines:
        row = json.loads(line)
        assert keep_trace(row["completion"], True) is None
    if lines:
        assert read_sft_jsonl(str(tmp_path / "rs.jsonl"))[0][0].startswith("Q:")


def test_keep_trace_rules():
    good = "<think> 2 + 2 = 4 </think> <answer> 4 </answer>"
    assert keep_trace(good, True) is None
    assert keep_trace(good, False) == "incorrect"
    assert keep_trace("<answer> 4 </answer>", True) == "malformed"
    assert keep_trace("<think> ```x``` </think> <answer> 4 </answer>", True) == "code_block"
    assert keep_trace("<think> 二加二 is four </think> <answer> 4 </answer>", True) == "mixed_language"
    assert keep_trace("<think> " + "word " * 600 + "</think> <answer> 4 </answer>", True) == "long_paragraph"


def test_mismatched_phases_on_resume_are_an_error(reference, tmp_path):
    with pytest.raises(StopRun):
        _run(tmp_path, stop_at_step=4)  # after the checkpoint at SFT step 3
    phases = _phases()
    phases[1] = SFTPhase("other", _pairs, steps=7, batch_size=4, seq_len=256)
    with pytest.raises(ValueError, match="phase 'sft'"):
        Runner(str(tmp_path), CFG, phases, seed=3, checkpoint_every=3).run()


def _snapshot_phases():
    from r1jax.phases import RestorePhase, SnapshotPhase

    sft = dict(batch_size=4, seq_len=256, log_every=1, optimizer=OptimizerConfig(learning_rate=3e-3))
    return [TokenizerPhase(texts=lambda: [a + b for a, b in _pairs()], vocab_size=300),
            SFTPhase("sft", _pairs, steps=2, **sft), SnapshotPhase("base"),
            SFTPhase("sft2", _pairs, steps=2, **sft), RestorePhase("base"),
            EvalPhase("eval", lambda: _problems("test", 2), TEMPLATE, SamplingSettings.for_evaluation(4), k=1)]


def test_restore_phase_brings_back_the_snapshot_params_across_a_resume(tmp_path):
    import jax

    from r1jax.phases import RestorePhase, SnapshotPhase, snapshot_dir

    class Record:  # the params right after sft, seen through a phase that only looks
        name, seen = "record", []

        def state_template(self, model_cfg):
            return {}

        def run(self, env, carry, state, cursor):
            Record.seen.append(jax.tree.map(np.asarray, carry.params))
            return carry

    phases = _snapshot_phases()
    phases.insert(2, Record())
    later = type("RecordLater", (Record,), {"name": "record_later"})()
    phases.insert(5, later)  # after sft2
    with pytest.raises(StopRun):  # killed inside sft2, after the snapshot
        Runner(str(tmp_path), CFG, phases, seed=1, checkpoint_every=1).run(stop_at_step=3)
    assert (tmp_path / "snapshots" / "base").is_dir() and snapshot_dir(str(tmp_path), "base").endswith("base")
    carry = Runner(str(tmp_path), CFG, phases, seed=1, checkpoint_every=1).run()
    after_sft, after_sft2 = Record.seen
    assert any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(after_sft), jax.tree.leaves(after_sft2)))
    restored = jax.tree.map(np.asarray, carry.params)
    for a, b in zip(jax.tree.leaves(after_sft), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)  # sft2's updates are gone
    assert carry.results["restore_base"]["from_global_step"] == 2 and "eval" in carry.results
    assert carry.files["snapshot_base"] == snapshot_dir(str(tmp_path), "base")

    with pytest.raises(FileNotFoundError, match="SnapshotPhase\\('other'\\) must run earlier"):
        Runner(str(tmp_path / "b"), CFG, [_snapshot_phases()[0], RestorePhase("other")]).run()
    with pytest.raises(ValueError, match="no params to snapshot"):
        Runner(str(tmp_path / "c"), CFG, [_snapshot_phases()[0], SnapshotPhase("x")]).run()
    with pytest.raises(ValueError, match="without"):
        SnapshotPhase("a/b")


def test_eval_phase_through_the_engine_scores_like_the_static_sampler(reference, tmp_path):
    workdir, carry = reference
    results = {}
    for rollout in ("static", "engine"):
        phase = EvalPhase(f"eval_{rollout}", lambda: _problems("test", 4), TEMPLATE,
                          SamplingSettings(max_new_tokens=12, temperature=0.0), k=2, rollout=rollout, rollout_slots=4)
        with MetricsWriter(tmp_path / rollout) as metrics:
            phase.run(_env(tmp_path, phase.name, metrics), carry, None, None)
        results[rollout] = [json.loads(line)["completions"]
                            for line in (tmp_path / f"{phase.name}.jsonl").read_text().splitlines()]
    assert results["engine"] == results["static"]
    bad = EvalPhase("bad", lambda: _problems("test", 1), TEMPLATE, SamplingSettings(max_new_tokens=4),
                    rollout="paged")
    with pytest.raises(ValueError, match="rollout='paged'"):
        bad.run(_env(tmp_path, "bad"), carry, None, None)


def test_evaluation_and_rejection_sampling_score_in_the_runs_reward_pool(monkeypatch):
    """EvalPhase and RejectionSamplingPhase take the pool settings RLPhase takes, and the recipes pass the run's."""
    import types

    from r1jax.phases import sample_phases
    from r1jax.recipes import r1, r1_zero

    pools = []

    class Pool:
        def __init__(self, workers, timeout_s):
            pools.append((workers, timeout_s))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(sample_phases, "RewardPool", Pool)
    monkeypatch.setattr(sample_phases, "evaluate", lambda *a, **kw: kw["pool"])
    env, carry = types.SimpleNamespace(rng=lambda: None), Carry(CFG)
    settings = SamplingSettings(max_new_tokens=4)
    pool = dict(reward_workers=3, reward_timeout_s=120.0)
    for phase in (EvalPhase("e", _problems, TEMPLATE, settings, **pool),
                  RejectionSamplingPhase("rs", _problems, TEMPLATE, settings, **pool)):
        assert isinstance(sample_phases.sample_and_score(phase, env, carry, []), Pool)
    assert pools == [(3, 120.0), (3, 120.0)]
    base = r1_zero.R1ZeroConfig(reward_workers=3, reward_timeout_s=120.0)
    for runner in (r1_zero.build(base, "unused"), r1.build(r1.R1Config(base=base), "unused")):
        scoring = [p for p in runner.phases if isinstance(p, (EvalPhase, RejectionSamplingPhase, RLPhase))]
        assert len(scoring) >= 3 and all((p.reward_workers, p.reward_timeout_s) == (3, 120.0) for p in scoring)


def test_lora_sft_trains_adapters_on_the_frozen_params_and_resumes(tmp_path):
    from r1jax.config import LoRAConfig

    def phases():
        return [TokenizerPhase(texts=lambda: [a + b for a, b in _pairs()], vocab_size=300),
                SFTPhase("base", _pairs, steps=2, batch_size=4, seq_len=256, optimizer=OptimizerConfig(3e-3)),
                SFTPhase("adapt", _pairs, steps=4, batch_size=4, seq_len=256, log_every=1,
                         optimizer=OptimizerConfig(learning_rate=3e-2), lora=LoRAConfig(rank=4, targets="mlp"))]

    whole = Runner(str(tmp_path / "whole"), CFG, phases(), seed=3, checkpoint_every=1).run()
    base = Runner(str(tmp_path / "base_only"), CFG, phases()[:2], seed=3).run().params
    with pytest.raises(StopRun):
        Runner(str(tmp_path / "killed"), CFG, phases(), seed=3, checkpoint_every=1).run(stop_at_step=4)
    resumed = Runner(str(tmp_path / "killed"), CFG, phases(), seed=3, checkpoint_every=1).run()
    assert _logged(tmp_path / "whole") == _logged(tmp_path / "killed")
    changed = {jax.tree_util.keystr(k) for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(whole.params)[0],
                                                             jax.tree.leaves(base)) if not np.array_equal(a, b)}
    assert changed and all("['mlp']" in k and k.endswith("['kernel']") for k in changed)  # adapters folded in
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    losses = [r["adapt/loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "adapt/loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert whole.results["adapt"]["lora/trainable_params"] == 2 * 3 * (32 * 4 + 4 * 64)  # gate, up: 32→64; down


def test_rejection_sampling_keeps_exactly_the_clean_correct_traces(tmp_path, monkeypatch):
    """The phase's own rules on known candidates (the sampler stubbed): it cannot pass by keeping nothing."""
    from types import SimpleNamespace

    from r1jax.phases import sample_phases

    good = "<think> 2 + 2 = 4. </think> <answer> 4 </answer>"
    candidates = [  # (completion, correct, truncated) for two problems, k = 3
        [(good, True, False), (good + " ", True, False), ("<answer> 4 </answer>", True, False)],
        [(good, False, False), (good, True, True), ("<think> 二加二 </think> <answer> 4 </answer>", True, False)]]
    records = [SimpleNamespace(completions=[c for c, _, _ in rows], correct=[ok for _, ok, _ in rows],
                               truncated=[t for _, _, t in rows]) for rows in candidates]
    monkeypatch.setattr(sample_phases, "sample_and_score",
                        lambda phase, env, carry, problems: SimpleNamespace(records=records))
    env = SimpleNamespace(workdir=str(tmp_path), log=lambda m: None)
    phase = RejectionSamplingPhase("rs", lambda: _problems("train", 2), TEMPLATE,
                                   SamplingSettings(max_new_tokens=8), k=3)
    out = phase.run(env, Carry(CFG), None, None)
    rows = [json.loads(line) for line in (tmp_path / "rs.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == [good]  # one per problem; the second problem has none clean
    assert out.results["rs"] == {"kept": 1.0, "sampled": 6.0, "rejected/malformed": 1.0, "rejected/incorrect": 1.0,
                                 "rejected/truncated": 1.0, "rejected/mixed_language": 1.0}


def test_data_callables_take_no_arguments_and_phases_default_to_no_saved_state():
    from r1jax.errors import UsageError
    from r1jax.phases import Phase, RestorePhase, SnapshotPhase
    from r1jax.phases.runner import read_data

    old_style = EvalPhase("eval", lambda ctx: _problems("test", 2), TEMPLATE, SamplingSettings.for_evaluation(4))
    with pytest.raises(UsageError, match="problems must take no arguments.*asks for ctx"):
        old_style.run(None, None, None, None)
    no_data = RLPhase("rl", _problems, {}, TEMPLATE, steps=1, eval_every=1)
    with pytest.raises(UsageError, match="needs eval_problems"):
        read_data(no_data, "eval_problems")
    assert all(p.state_template(CFG) == {} for p in (old_style, SnapshotPhase("s"), RestorePhase("s")))
    assert isinstance(old_style, Phase) and isinstance(no_data, Phase)


def test_a_phase_says_what_it_passes_on(tmp_path):
    """A phase gets the fixed environment and the last carry and must return the next carry; a phase
    written against the old `run(ctx, state, cursor)` is refused before anything runs."""
    import dataclasses

    from r1jax.errors import UsageError
    from r1jax.phases import Phase

    @dataclasses.dataclass(frozen=True)
    class Note(Phase):
        name: str = "note"

        def run(self, env, carry, state, cursor):
            return carry.with_result(self.name, {"seen": sorted(carry.results), "seed": env.seed,
                                                 "workdir": env.workdir == str(tmp_path / "run")})

    class Forgets(Note):
        def run(self, env, carry, state, cursor):
            carry.with_result(self.name, {})  # builds a new carry and drops it

    class OldStyle:
        name = "old"

        def run(self, ctx, state, cursor):
            pass

    tok = TokenizerPhase(texts=lambda: [a + b for a, b in _pairs()], vocab_size=300)
    carry = Runner(str(tmp_path / "run"), CFG, [tok, Note()], seed=5).run()
    assert carry.results["note"] == {"seen": ["tokenizer"], "seed": 5, "workdir": True}
    assert carry.params is None and carry.tokenizer.vocab_size == carry.model_cfg.vocab_size
    with pytest.raises(TypeError, match="phase 'note': run must return the Carry"):
        Runner(str(tmp_path / "forgets"), CFG, [Forgets()]).run()
    with pytest.raises(UsageError, match="phase 'old': run takes \\(ctx, state, cursor\\), the old interface"):
        Runner(str(tmp_path / "old"), CFG, [OldStyle()])
    assert not (tmp_path / "old").exists()
