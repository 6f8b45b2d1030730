"""Phases of the DeepSeek-R1 recipe and the runner that executes a list of them with checkpoints."""
from r1jax.phases.init_phases import (InitFromPhase, RestorePhase, SnapshotPhase, load_source, snapshot_dir,
                                      source_model_config)
from r1jax.phases.runner import Carry, Phase, RunEnv, Runner, StopRun
from r1jax.phases.sample_phases import EvalPhase, RejectionSamplingPhase, keep_trace, read_sft_jsonl
from r1jax.phases.train_phases import RLPhase, SFTPhase, TokenizerPhase, problem_stream

__all__ = ["Carry", "EvalPhase", "InitFromPhase", "Phase", "RLPhase", "RejectionSamplingPhase", "RestorePhase", "RunEnv",
           "Runner", "SFTPhase", "SnapshotPhase", "StopRun", "TokenizerPhase", "keep_trace", "load_source",
           "problem_stream", "read_sft_jsonl", "snapshot_dir", "source_model_config"]
