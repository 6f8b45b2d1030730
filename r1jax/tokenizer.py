"""SentencePiece tokenizer: train from texts, save/load `.model`, batch-encode to padded arrays.

Trained models are lossless: BPE with byte fallback, digits split, identity
normalization and no whitespace folding, so `decode(encode(text)) == text` for
any text, newlines and repeated spaces included. pad/bos/eos and the reasoning
tags `<think> </think> <answer> </answer>` are single ids.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from r1jax.errors import UsageError
from r1jax.fileio import atomic_write

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class TokenizerError(UsageError):
    """A tokenizer file or request that r1jax cannot use."""


class Tokenizer:
    """A lossless SentencePiece model with r1jax's special tokens."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self.source = source
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
            raise TokenizerError(f"{source}: not a valid SentencePiece model ({e})") from None
        self._proto = model_proto
        missing = [t for t in REASONING_TAGS if self._sp.piece_to_id(t) == self._sp.unk_id()]
        if missing:
            raise TokenizerError(f"{source}: model lacks special tokens {missing}")
        for name, ident in (("pad", self.pad_id), ("bos", self.bos_id), ("eos", self.eos_id)):
            if ident < 0:
                raise TokenizerError(f"{source}: model has no {name} token")

    # ----------------------------------------------------------------- creation
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, *, extra_symbols: Sequence[str] = (),
              max_sentence_length: int = 1 << 16) -> "Tokenizer":
        """Train a BPE model on `texts`; `vocab_size` is an upper bound when the corpus is small."""
        if vocab_size < 256 + 8 + len(extra_symbols):
            raise TokenizerError(f"vocab_size={vocab_size} is too small: byte fallback needs 256 ids "
                                 f"plus {8 + len(extra_symbols)} special and seed pieces")
        count = 0

        def sentences():
            nonlocal count
            for text in texts:
                if not isinstance(text, str):
                    raise TokenizerError(f"training text #{count} is {type(text).__name__}, not str")
                count += 1
                yield text

        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=buf, model_type="bpe",
                vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
                split_digits=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=False,
                allow_whitespace_only_pieces=True, character_coverage=1.0,
                user_defined_symbols=list(REASONING_TAGS) + list(extra_symbols),
                pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK,
                bos_piece=BOS, eos_piece=EOS, max_sentence_length=max_sentence_length,
                minloglevel=2, num_threads=os.cpu_count() or 1)
        except TokenizerError:
            raise
        except Exception as e:
            raise TokenizerError(f"SentencePiece training failed after {count} texts: {e}") from None
        if count == 0:
            raise TokenizerError("no training texts given")
        return cls(buf.getvalue(), source="<trained>")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load a `.model` file; a missing or corrupt file raises an error naming it."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        with open(path, "rb") as f:
            proto = f.read()
        if not proto:
            raise TokenizerError(f"{path}: tokenizer model file is empty")
        return cls(proto, source=path)

    def save(self, path: str | os.PathLike) -> None:
        """Write the `.model` file atomically (a crash never leaves half a file)."""
        atomic_write(path, self._proto)

    # ------------------------------------------------------------------- ids
    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end a completion: eos alone."""
        return (self.eos_id,)

    def token_id(self, piece: str) -> int:
        """The id of a single-piece token such as `<think>`; unknown pieces raise."""
        ident = self._sp.piece_to_id(piece)
        if ident == self._sp.unk_id() and piece != UNK:
            raise TokenizerError(f"{self.source}: {piece!r} is not a single token")
        return ident

    def id_to_piece(self, ident: int) -> str:
        return self._sp.id_to_piece(int(ident))

    # -------------------------------------------------------------- encoding
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._sp.encode(text)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos ids decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def encode_batch(self, texts: Sequence[str], *, max_len: int | None = None,
                     pad_to_multiple: int = 1, left_pad: bool = False, add_bos: bool = False,
                     add_eos: bool = False, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Encode to `(ids_BxL int32, lengths_B int32)`, padded with `pad_id`.

        L is `max_len` if given, else the longest row rounded up to `pad_to_multiple`
        (bucketing keeps jitted shapes few). A row longer than `max_len` is an error
        unless `truncate`, which keeps its first `max_len` ids.
        """
        rows = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        return pad_rows(rows, self.pad_id, max_len=max_len, pad_to_multiple=pad_to_multiple, left_pad=left_pad,
                        truncate=truncate)

    def decode_batch(self, ids_BxL: np.ndarray, lengths_B: np.ndarray | None = None,
                     left_pad: bool = False) -> list[str]:
        """Inverse of `encode_batch` (pads dropped; rows cut at `lengths_B` when given)."""
        ids_BxL = np.asarray(ids_BxL)
        out = []
        for i, row in enumerate(ids_BxL):
            if lengths_B is not None:
                n = int(lengths_B[i])
                row = row[len(row) - n:] if left_pad else row[:n]
            out.append(self.decode(row.tolist()))
        return out


def tokenizer_stop_ids(tokenizer) -> tuple[int, ...]:
    """The tokens that end a completion for `tokenizer`: its `stop_ids`, or its eos id alone."""
    return tuple(getattr(tokenizer, "stop_ids", None) or (tokenizer.eos_id,))


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, max_len: int | None = None, pad_to_multiple: int = 1,
             left_pad: bool = False, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token rows as `(ids_BxL int32, lengths_B int32)`, padded to max_len or the longest row (bucketed)."""
    longest = max((len(r) for r in rows), default=0)
    if max_len is None:
        width = max(1, -(-longest // pad_to_multiple) * pad_to_multiple)
    else:
        width = max_len
        for i, r in enumerate(rows):
            if len(r) > max_len and not truncate:
                raise TokenizerError(f"row {i} has {len(r)} tokens > max_len={max_len}")
    ids_BxL = np.full((len(rows), width), pad_id, dtype=np.int32)
    lengths_B = np.zeros((len(rows),), dtype=np.int32)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        lengths_B[i] = len(r)
        if left_pad:
            ids_BxL[i, width - len(r):] = r
        else:
            ids_BxL[i, :len(r)] = r
    return ids_BxL, lengths_B
