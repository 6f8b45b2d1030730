"""Data: procedural verifiable tasks, worked solutions, JSONL datasets and prompt templates."""
from r1jax.data.arithmetic import ArithmeticConfig, generate_arithmetic, solve_arithmetic
from r1jax.data.cot import RECHECK_PHRASE, Solution, render_r1
from r1jax.data.countdown import CountdownConfig, check_countdown, generate_countdown, solve_countdown
from r1jax.data.jsonl import DatasetError, load_jsonl
from r1jax.data.problems import Problem, batch_columns, canonical_key, split_of
from r1jax.data.solutions import worked_solution, worked_solutions
from r1jax.data.templates import R1_CHAT, R1_ZERO, ChatTemplate, PromptTemplate

__all__ = [
    "ArithmeticConfig", "generate_arithmetic", "solve_arithmetic",
    "RECHECK_PHRASE", "Solution", "render_r1",
    "CountdownConfig", "check_countdown", "generate_countdown", "solve_countdown",
    "DatasetError", "load_jsonl",
    "Problem", "batch_columns", "canonical_key", "split_of",
    "worked_solution", "worked_solutions",
    "R1_CHAT", "R1_ZERO", "ChatTemplate", "PromptTemplate",
]
