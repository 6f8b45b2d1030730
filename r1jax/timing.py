"""What benchmarks share, standard library only (experiments/bench.py and the torch peer in benchmarks/ use it).

    t = best_time(lambda: step().block_until_ready(), repeats=3)
    flops = train_flops(body_params, head_params, tokens, head_tokens, layers, seq, d_attn)
"""
from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls of fn (which blocks until its work is done), after one warm-up call."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def train_flops(body: int, head: int, tokens: int, head_tokens: int, layers: int, seq: int, d_attn: int) -> float:
    """A training step's model FLOPs: 6·N·T for the body's N params on every token and the head's where it
    is applied, plus 12·layers·S·d_attn·T for attention (causal, counted whole as PaLM's appendix B does)."""
    return 6 * body * tokens + 6 * head * head_tokens + 12 * layers * seq * d_attn * tokens
