"""SFT rows: (prompt, completion) text → token rows with a completion-only loss mask, packed or padded.

The supervised data of DeepSeek-R1's cold start, rejection-sampling SFT and
distillation stages (arXiv 2501.12948, §2.3 and §2.4): the model learns to write
the completion given the prompt, so only completion tokens (and EOS) count.

    examples = encode_examples(tok, pairs)                  # [Example(ids_L, loss_mask_L)]
    packed, stats = pack(examples, seq_len=1024)            # PackedBatch of N rows × seq_len
    for batch, cursor in batches(packed, 64, seed=0, epochs=2):
        state, metrics = step(state, batch)                 # save `cursor` with the checkpoint

`PackedBatch` conventions (every array B×L, B rows of L slots):
  tokens_BxL       int32, pad id 0 in padding.
  segment_ids_BxL  int32: 0 = padding, 1, 2, … = the examples of a row, in order.
  positions_BxL    int32: restart at 0 at each segment (RoPE position), 0 in padding.
  loss_mask_BxL    float32: 1 where the token is a training *target* (completion
                   tokens and EOS), 0 on prompt tokens, padding and every segment's
                   first token (nothing before it in its segment predicts it), so
                   the sum of the mask is exactly the number of tokens in the loss.
The hidden state at slot t predicts the token at slot t + 1 of the same segment;
`r1jax.train.sft_step.next_token_targets` makes those targets.

Overlong examples (longer than seq_len): `overlong='drop'` (default) leaves them
out, because a cut-off reasoning trace has lost its answer and EOS and would teach
the model to ramble; `overlong='truncate'` keeps their first seq_len tokens.
Either way `PackStats` counts them, and examples with no target token left are
dropped and counted too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np


OVERLONG = ("drop", "truncate")


class Example(NamedTuple):
    """One tokenized SFT example: ids_L and loss_mask_L (1 on completion tokens and EOS)."""

    ids_L: np.ndarray  # int32
    loss_mask_L: np.ndarray  # float32


class PackedBatch(NamedTuple):
    """Token rows for SFT (a pytree: pass it to jitted steps as is); see the module docstring."""

    tokens_BxL: np.ndarray
    segment_ids_BxL: np.ndarray
    positions_BxL: np.ndarray
    loss_mask_BxL: np.ndarray

    def rows(self, index_N: np.ndarray) -> PackedBatch:
        """The rows at `index_N`, in that order."""
        return PackedBatch(*(x[index_N] for x in self))


@dataclasses.dataclass(frozen=True)
class PackStats:
    """What packing did: examples in, kept, truncated, dropped; rows out and how full they are."""

    examples: int
    kept: int
    truncated: int
    dropped_overlong: int
    dropped_empty: int
    rows: int
    tokens: int  # real (non-padding) tokens
    loss_tokens: int  # tokens counted in the loss (sum of loss_mask)
    seq_len: int

    @property
    def fill(self) -> float:
        """Fraction of slots holding real tokens."""
        return self.tokens / max(1, self.rows * self.seq_len)


class Cursor(NamedTuple):
    """A place in the data order: `index` batches of `epoch` already consumed."""

    epoch: int = 0
    index: int = 0


def encode_examples(tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool = True,
                    add_eos: bool = True) -> list[Example]:
    """Tokenize prompt and completion separately (so the mask boundary is exact) and concatenate."""
    out = []
    for i, (prompt, completion) in enumerate(pairs):
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise TypeError(f"pair {i}: prompt and completion must be str")
        prompt_ids = tokenizer.encode(prompt, add_bos=add_bos)
        completion_ids = tokenizer.encode(completion, add_eos=add_eos)
        ids_L = np.asarray(prompt_ids + completion_ids, np.int32)
        loss_mask_L = np.concatenate([np.zeros(len(prompt_ids), np.float32),
                                      np.ones(len(completion_ids), np.float32)])
        out.append(Example(ids_L, loss_mask_L))
    return out


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit bin packing: item i goes to the lowest-numbered row with room, in order.

    A max-tree over rows' free space finds that row in O(log n) (10⁵ examples: about a second).
    """
    if any(not 0 < n <= capacity for n in lengths):
        raise ValueError(f"every length must be in [1, {capacity}]")
    size = 1
    while size < len(lengths):
        size *= 2
    free = [capacity] * (2 * size)  # free[node]: most free space in any row under node
    rows: list[list[int]] = []
    for item, length in enumerate(lengths):
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= length else 2 * node + 1
        row = node - size
        if row == len(rows):
            rows.append([])
        rows[row].append(item)
        free[node] -= length
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return rows


def _fit(examples: Sequence[Example], seq_len: int, overlong: str) -> tuple[list[Example], dict[str, int]]:
    """Examples cut or dropped to fit seq_len, their first token unmasked; counts of what happened."""
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be >= 2")
    kept, counts = [], {"truncated": 0, "dropped_overlong": 0, "dropped_empty": 0}
    for ids_L, mask_L in examples:
        ids_L, mask_L = np.asarray(ids_L, np.int32), np.asarray(mask_L, np.float32)
        if ids_L.shape != mask_L.shape or ids_L.ndim != 1:
            raise ValueError(f"example ids {ids_L.shape} and loss mask {mask_L.shape} must be equal 1-d shapes")
        if len(ids_L) > seq_len:
            if overlong == "drop":
                counts["dropped_overlong"] += 1
                continue
            ids_L, mask_L = ids_L[:seq_len], mask_L[:seq_len]
            counts["truncated"] += 1
        mask_L = mask_L.copy()
        mask_L[:1] = 0.0  # a segment's first token has nothing to predict it
        if not mask_L.any():
            counts["dropped_empty"] += 1
            continue
        kept.append(Example(ids_L, mask_L))
    return kept, counts


def _rows_to_batch(rows: list[list[Example]], seq_len: int) -> PackedBatch:
    shape = (len(rows), seq_len)
    tokens, segments = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    positions, loss_mask = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    for r, row in enumerate(rows):
        start = 0
        for s, (ids_L, mask_L) in enumerate(row, start=1):
            end = start + len(ids_L)
            tokens[r, start:end], loss_mask[r, start:end] = ids_L, mask_L
            segments[r, start:end], positions[r, start:end] = s, np.arange(len(ids_L))
            start = end
    return PackedBatch(tokens, segments, positions, loss_mask)


def _stats(examples, kept, counts, batch: PackedBatch, seq_len: int) -> PackStats:
    return PackStats(examples=len(examples), kept=len(kept), rows=batch.tokens_BxL.shape[0],
                     tokens=int((batch.segment_ids_BxL != 0).sum()), loss_tokens=int(batch.loss_mask_BxL.sum()),
                     seq_len=seq_len, **counts)


def pack(examples: Sequence[Example], seq_len: int, overlong: str = "drop",
         sort: bool = True) -> tuple[PackedBatch, PackStats]:
    """Greedy first-fit packing into rows of seq_len (longest first when `sort`, deterministic)."""
    kept, counts = _fit(examples, seq_len, overlong)
    order = sorted(range(len(kept)), key=lambda i: -len(kept[i].ids_L)) if sort else list(range(len(kept)))
    bins = first_fit([len(kept[i].ids_L) for i in order], seq_len)
    batch = _rows_to_batch([[kept[order[j]] for j in row] for row in bins], seq_len)
    return batch, _stats(examples, kept, counts, batch, seq_len)


def pad_rows(examples: Sequence[Example], seq_len: int, overlong: str = "drop") -> tuple[PackedBatch, PackStats]:
    """Unpacked rows: one example per row, right-padded to seq_len, in the given order."""
    kept, counts = _fit(examples, seq_len, overlong)
    batch = _rows_to_batch([[e] for e in kept], seq_len)
    return batch, _stats(examples, kept, counts, batch, seq_len)


def batches_per_epoch(packed: PackedBatch, batch_size: int) -> int:
    """Full batches in one epoch (the last partial batch is dropped: jitted shapes stay fixed)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return packed.tokens_BxL.shape[0] // batch_size


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row permutation of `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def batches(packed: PackedBatch, batch_size: int, seed: int, epoch: int = 0, index: int = 0,
            epochs: int | None = None) -> Iterator[tuple[PackedBatch, Cursor]]:
    """Shuffled batches from Cursor(epoch, index) to the end of epoch `epochs - 1` (default: this epoch only).

    Yields (batch, cursor after it); `batches(packed, batch_size, seed, *cursor, epochs)`
    resumes with exactly the batches that would have come next.
    """
    per_epoch = batches_per_epoch(packed, batch_size)
    if per_epoch == 0:
        raise ValueError(f"{packed.tokens_BxL.shape[0]} rows make no batch of {batch_size}")
    if not 0 <= index <= per_epoch:
        raise ValueError(f"index={index} is outside an epoch of {per_epoch} batches")
    epochs = epoch + 1 if epochs is None else epochs
    for e in range(epoch, epochs):
        order_N = epoch_order(packed.tokens_BxL.shape[0], seed, e)
        for i in range(index if e == epoch else 0, per_epoch):
            after = Cursor(e + 1, 0) if i + 1 == per_epoch else Cursor(e, i + 1)
            yield packed.rows(order_N[i * batch_size:(i + 1) * batch_size]), after
