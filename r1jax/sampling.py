"""Jitted sampler: one prefill per prompt, its KV cache shared by G samples, a while_loop decode.

    sampler = Sampler(model_cfg, eos_id=tok.eos_id, pad_id=tok.pad_id, stop_ids=tok.stop_ids)
    out = sampler.generate(params, prompt_ids, rng, group_size=8,
                           settings=SamplingSettings(max_new_tokens=256, temperature=1.0))
    # or, field by field: sampler.sample(params, prompt_ids, rng, group_size=8, max_new_tokens=256)
    out.tokens_BxT, out.logps_BxT, out.lengths_B, out.truncated_B   # B = prompts · G

Rows b·G … b·G+G−1 are the samples of prompt b. `logps_BxT` are log-probs of
the sampled tokens under the *raw* model (temperature 1, no top-p/top-k), the
quantity the GRPO ratio needs; they are 0 after a row's end. A row ends with its
EOS token or one of `stop_ids` (the sampler's and the settings'; included in its length);
`truncated_B` marks rows that hit max_new_tokens without one. Prompt lengths are rounded up to a multiple of
`prompt_bucket`, so calls with a new prompt length in the same bucket, batch
size and settings reuse the compiled code.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ModelConfig, SamplingSettings
from r1jax.model import Cache, Transformer, init_cache, positions_from_mask, repeat_cache
from r1jax.sampling_ops import choose_tokens
from r1jax.tokenizer import pad_rows


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids_PxL int32, mask_PxL bool): prompts right-aligned in a width rounded up to `bucket`, so
    every row's last real token is in the last column (the sampler's and the GRPO batch's layout)."""
    ids_PxL, lengths_P = pad_rows(prompts, pad_id, pad_to_multiple=bucket, left_pad=True)
    width = ids_PxL.shape[1]
    return ids_PxL, np.arange(width)[None, :] >= (width - lengths_P)[:, None]


@flax.struct.dataclass
class SamplingState:
    """Loop carry of the decode; every field says its shape (B rows, T = max_new_tokens, V vocab)."""

    step: jax.Array  # int32 scalar: tokens generated so far
    tokens_BxT: jax.Array  # int32, pad after a row's end
    logps_BxT: jax.Array  # f32, 0 after a row's end
    done_B: jax.Array  # bool: row emitted EOS
    lengths_B: jax.Array  # int32: generated tokens, EOS included
    next_pos_B: jax.Array  # int32: RoPE position of the next token of each row
    logits_BxV: jax.Array  # f32: the model's prediction for the next token
    cache: Cache


@flax.struct.dataclass
class SampleOutput:
    tokens_BxT: jax.Array
    logps_BxT: jax.Array
    lengths_B: jax.Array
    truncated_B: jax.Array


def check_request(prompts: Sequence[Sequence[int]], vocab_size: int, stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """The prompts as lists of ints, after checking that there is one, that none is empty and that every
    token and stop id is in the model's vocabulary (an out-of-range id would index the embedding silently)."""
    if not prompts:
        raise ValueError("no prompts to sample from")
    prompts = [list(map(int, p)) for p in prompts]
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        ids = np.asarray(prompt)
        bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
        if bad.size:
            raise ValueError(f"prompt {i} holds token {ids[bad[0]]} at position {bad[0]}, outside the model's "
                             f"vocabulary [0, {vocab_size})")
    check_stop_ids(stop_ids, vocab_size)
    return prompts


def check_stop_ids(stop_ids: Sequence[int], vocab_size: int) -> tuple[int, ...]:
    """The stop ids as ints, each checked to be a token of the model's vocabulary."""
    stops = tuple(map(int, stop_ids))
    for stop in stops:
        if not 0 <= stop < vocab_size:
            raise ValueError(f"stop id {stop} is outside the model's vocabulary [0, {vocab_size})")
    return stops


def _per_row(value: float | Sequence[float] | np.ndarray, prompts: int, group: int, name: str) -> np.ndarray:
    """A scalar, one value per prompt, or one per row, as a float32 array of one per row."""
    arr = np.asarray(value, np.float32)
    if arr.ndim == 0:
        return np.full((prompts * group,), arr, np.float32)
    if arr.shape == (prompts,):
        return np.repeat(arr, group)
    if arr.shape == (prompts * group,):
        return arr
    raise ValueError(f"{name} has shape {arr.shape}; expected a scalar, ({prompts},) or ({prompts * group},)")


class Sampler:
    """Generates completions for a batch of token-id prompts with a `Transformer` and its cache."""

    def __init__(self, cfg: ModelConfig, *, eos_id: int, pad_id: int, prompt_bucket: int = 32,
                 cache_dtype: Any = None, stop_ids: Sequence[int] = ()):
        """A row ends at `eos_id` or at any of `stop_ids` (a tokenizer's `stop_ids`)."""
        if prompt_bucket < 1:
            raise ValueError(f"prompt_bucket={prompt_bucket} must be >= 1")
        self.cfg, self.eos_id, self.pad_id = cfg, int(eos_id), int(pad_id)
        self.stop_ids = tuple(dict.fromkeys((self.eos_id, *map(int, stop_ids))))
        self.prompt_bucket, self.cache_dtype = prompt_bucket, cache_dtype
        self.model = Transformer(cfg)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("group_size", "max_new_tokens"))
        self._decode = jax.jit(self._decode_impl, static_argnames=("top_k", "stop_ids"), donate_argnames=("state",))
        self._step = jax.jit(self._step_impl, static_argnames=("top_k", "stop_ids"), donate_argnames=("state",))

    # ------------------------------------------------------------- device side
    def _prefill_impl(self, params, prompt_PxL, prompt_mask_PxL, *, group_size: int,
                      max_new_tokens: int) -> SamplingState:
        num_prompts, length = prompt_PxL.shape
        positions_PxL = positions_from_mask(prompt_mask_PxL)
        cache = init_cache(self.cfg, num_prompts, length + max_new_tokens, self.cache_dtype)
        hidden_PxLxE, cache = self.model.apply({"params": params}, prompt_PxL, positions_PxL,
                                               prompt_mask_PxL, cache, method="hidden")
        # prompts are left-padded: the last column is every row's last real token
        logits_PxV = self.model.apply({"params": params}, hidden_PxLxE[:, -1:], method="logits")[:, 0]
        rows = num_prompts * group_size
        return SamplingState(
            step=jnp.zeros((), jnp.int32),
            tokens_BxT=jnp.full((rows, max_new_tokens), self.pad_id, jnp.int32),
            logps_BxT=jnp.zeros((rows, max_new_tokens), jnp.float32),
            done_B=jnp.zeros((rows,), bool),
            lengths_B=jnp.zeros((rows,), jnp.int32),
            next_pos_B=jnp.repeat(prompt_mask_PxL.sum(axis=1, dtype=jnp.int32), group_size),
            logits_BxV=jnp.repeat(logits_PxV, group_size, axis=0),
            cache=repeat_cache(cache, group_size),
        )

    def _advance(self, params, state: SamplingState, rng, temperature_B, top_p_B, top_k,
                 stop_ids: tuple[int, ...]) -> SamplingState:
        """Choose each live row's next token, record it, and run the model on it."""
        token_B, logp_B = choose_tokens(state.logits_BxV, jax.random.fold_in(rng, state.step),
                                        temperature_B, top_p_B, top_k)
        live_B = ~state.done_B
        token_B = jnp.where(live_B, token_B, self.pad_id)
        logp_B = jnp.where(live_B, logp_B, 0.0)
        col = state.step
        tokens_BxT = jax.lax.dynamic_update_slice(state.tokens_BxT, token_B[:, None], (0, col))
        logps_BxT = jax.lax.dynamic_update_slice(state.logps_BxT, logp_B[:, None], (0, col))
        logits_Bx1xV, cache = self.model.apply({"params": params}, token_B[:, None], state.next_pos_B[:, None],
                                               live_B[:, None], state.cache)
        return SamplingState(
            step=state.step + 1, tokens_BxT=tokens_BxT, logps_BxT=logps_BxT,
            done_B=state.done_B | (live_B & jnp.isin(token_B, jnp.asarray(stop_ids, jnp.int32))),
            lengths_B=state.lengths_B + live_B.astype(jnp.int32),
            next_pos_B=state.next_pos_B + 1, logits_BxV=logits_Bx1xV[:, 0], cache=cache)

    def _decode_impl(self, params, state: SamplingState, rng, temperature_B, top_p_B, *,
                     top_k: int | None, stop_ids: tuple[int, ...]) -> SamplingState:
        max_new_tokens = state.tokens_BxT.shape[1]

        def steps_left_and_some_row_running(s: SamplingState):
            return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

        return jax.lax.while_loop(steps_left_and_some_row_running,
                                  lambda s: self._advance(params, s, rng, temperature_B, top_p_B, top_k, stop_ids),
                                  state)

    def _step_impl(self, params, state, rng, temperature_B, top_p_B, *, top_k, stop_ids):
        return self._advance(params, state, rng, temperature_B, top_p_B, top_k, stop_ids)

    # --------------------------------------------------------------- host side
    def _start(self, params, prompts: Sequence[Sequence[int]], *, group_size: int, max_new_tokens: int,
               temperature, top_p) -> tuple[SamplingState, jax.Array, jax.Array]:
        if group_size < 1 or max_new_tokens < 1:
            raise ValueError(f"group_size={group_size} and max_new_tokens={max_new_tokens} must be >= 1")
        prompt_PxL, mask_PxL = left_pad(check_request(prompts, self.cfg.vocab_size), self.pad_id, self.prompt_bucket)
        temperature_B = _per_row(temperature, len(prompts), group_size, "temperature")
        top_p_B = _per_row(top_p, len(prompts), group_size, "top_p")
        if (temperature_B < 0).any() or ((top_p_B <= 0) | (top_p_B > 1)).any():
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        state = self._prefill(params, prompt_PxL, mask_PxL, group_size=group_size,
                              max_new_tokens=max_new_tokens)
        return state, jnp.asarray(temperature_B), jnp.asarray(top_p_B)

    @staticmethod
    def _output(state: SamplingState) -> SampleOutput:
        return SampleOutput(tokens_BxT=state.tokens_BxT, logps_BxT=state.logps_BxT, lengths_B=state.lengths_B,
                            truncated_B=~state.done_B)

    def sample(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array, *, group_size: int = 1,
               max_new_tokens: int, temperature=1.0, top_p=1.0, top_k: int | None = None,
               stop_ids: Sequence[int] = ()) -> SampleOutput:
        """G completions of each prompt (token ids, no padding); temperature/top_p per prompt or row.

        A row also ends at any of `stop_ids` (on top of the sampler's own)."""
        stops = tuple(dict.fromkeys((*self.stop_ids, *check_stop_ids(stop_ids, self.cfg.vocab_size))))
        state, temperature_B, top_p_B = self._start(params, prompts, group_size=group_size,
                                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p)
        return self._output(self._decode(params, state, rng, temperature_B, top_p_B, top_k=top_k, stop_ids=stops))

    def generate(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array, *, group_size: int = 1,
                 settings: SamplingSettings) -> SampleOutput:
        """`sample` with every setting from `settings` (the engine's signature: r1jax.engine.Engine)."""
        return self.sample(params, prompts, rng, group_size=group_size, max_new_tokens=settings.max_new_tokens,
                           temperature=settings.temperature, top_p=settings.top_p,
                           top_k=settings.top_k or None, stop_ids=settings.stop_ids)

    def stream(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array, *, group_size: int = 1,
               max_new_tokens: int, temperature=1.0, top_p=1.0, top_k: int | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The same tokens as `sample` for the same rng, one step at a time (for notebooks).

        Yields `(token_B, done_B)` as numpy after each step; pad for rows already done.
        """
        state, temperature_B, top_p_B = self._start(params, prompts, group_size=group_size,
                                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p)
        for t in range(max_new_tokens):
            state = self._step(params, state, rng, temperature_B, top_p_B, top_k=top_k, stop_ids=self.stop_ids)
            done_B = np.asarray(state.done_B)
            yield np.asarray(state.tokens_BxT[:, t]), done_B
            if done_B.all():
                return
