"""Rule-based rewards for GRPO (DeepSeek-R1, arXiv 2501.12948, Sec. 2.2.2) and TinyZero's countdown.

Every reward has one signature:

    reward(prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float]

one float per completion. Dataset columns arrive as keyword arguments, each a sequence aligned
with `completions`: accuracy reads `answer` (gold answer string); countdown reads `numbers`
(ints per row) and `target` (int per row); language reads optional `language` (code per row,
default "en"). A reward ignores columns it does not use (`**_`), so any reward can take any
batch. A research fork swaps a reward by passing another function with this signature:

    combine_rewards(prompts, completions,
                    {"accuracy": WeightedReward(accuracy_reward, 1.0),
                     "format": WeightedReward(format_reward, 1.0)},
                    pool=pool, answer=answers)

Run rewards in a `RewardPool` in training: model text then never meets reward code in the
trainer process, and a reward that hangs or raises scores 0 instead of stopping the run.
Nothing here imports jax.
"""
from r1jax.rewards.accuracy import accuracy_reward, is_correct
from r1jax.rewards.base import RewardFn, Scores, score_in_process
from r1jax.rewards.code import (
    CodeReward,
    CodeTask,
    CodeTests,
    code_reward,
    extract_code,
    grade,
    load_code_tasks,
    parse_tests,
)
from r1jax.rewards.combine import CombinedRewards, WeightedReward, combine_rewards
from r1jax.rewards.countdown import (
    EquationError,
    countdown_reward,
    make_countdown_reward,
    parse_equation,
    score_equation,
)
from r1jax.rewards.format import format_reward, is_well_formed
from r1jax.rewards.language import LANGUAGES, chain_of_thought, language_reward, language_share
from r1jax.rewards.pool import PendingScores, RewardPool
from r1jax.rewards.sandbox import SandboxLimits, isolation_level, run_sandboxed

__all__ = [
    "LANGUAGES",
    "CodeReward",
    "CodeTask",
    "CodeTests",
    "CombinedRewards",
    "EquationError",
    "PendingScores",
    "RewardFn",
    "RewardPool",
    "SandboxLimits",
    "Scores",
    "WeightedReward",
    "accuracy_reward",
    "chain_of_thought",
    "code_reward",
    "combine_rewards",
    "countdown_reward",
    "extract_code",
    "format_reward",
    "grade",
    "is_correct",
    "is_well_formed",
    "isolation_level",
    "language_reward",
    "language_share",
    "load_code_tasks",
    "make_countdown_reward",
    "parse_equation",
    "parse_tests",
    "run_sandboxed",
    "score_equation",
    "score_in_process",
]
