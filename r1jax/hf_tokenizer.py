"""A Hugging Face `tokenizer.json` (Qwen2.5, Llama-3, …) behind r1jax's tokenizer interface.

    tok = HFTokenizer.load("/ckpt/Qwen2.5-1.5B")     # folder with tokenizer.json (+ tokenizer_config.json)

Read with the `tokenizers` package, offline. It offers what the sampler, the
trainer and evaluation use from `r1jax.tokenizer.Tokenizer`: encode, decode,
encode_batch, pad/bos/eos ids and vocab_size. Special tokens come from
tokenizer_config.json (eos_token, pad_token, bos_token) when present; `stop_ids` adds the other
end-of-sequence ids of generation_config.json (`eos_token_id`, an int or a list) to eos.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from r1jax.tokenizer import TokenizerError


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _generation_stop_ids(path: str) -> tuple[int, ...]:
    """generation_config.json's `eos_token_id` (an int or a list of them), or () without the file or field."""
    if not os.path.isfile(path):
        return ()
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    values = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenizerError(f"{path}: eos_token_id must be an int or a list of ints, got {value!r}")
    return tuple(values)


class HFTokenizer:
    """tokenizer.json through `tokenizers`, with the interface of `r1jax.tokenizer.Tokenizer`."""

    def __init__(self, tokenizer, eos_token: str, pad_token: str | None = None, bos_token: str | None = None,
                 source: str = "<memory>", extra_stop_ids: tuple[int, ...] = ()):
        self._tok, self.source = tokenizer, source

        def ident(token: str | None, name: str, required: bool) -> int:
            if token is None:
                if required:
                    raise TokenizerError(f"{source}: no {name} token configured")
                return -1
            found = tokenizer.token_to_id(token)
            if found is None:
                raise TokenizerError(f"{source}: {name} token {token!r} is not in the vocabulary")
            return found

        self.eos_id = ident(eos_token, "eos", True)
        self.pad_id = ident(pad_token, "pad", False) if pad_token else self.eos_id
        self.bos_id = ident(bos_token, "bos", False)
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        bad = [i for i in extra_stop_ids if not 0 <= i < vocab]
        if bad:
            raise TokenizerError(f"{source}: stop token ids {bad} are outside the vocabulary (size {vocab})")
        # what ends a completion: eos, and generation_config.json's other eos ids (Qwen-Instruct: <|endoftext|>)
        self.stop_ids = tuple(dict.fromkeys((self.eos_id, *extra_stop_ids)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTokenizer:
        """From a folder (tokenizer.json + optional tokenizer_config.json) or a tokenizer.json file."""
        from tokenizers import Tokenizer as RawTokenizer

        path = os.fspath(path)
        folder, file = (path, os.path.join(path, "tokenizer.json")) if os.path.isdir(path) else \
            (os.path.dirname(path), path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer.json not found: {file}")
        try:
            raw = RawTokenizer.from_file(file)
        except Exception as e:  # tokenizers raises its own exception type
            raise TokenizerError(f"{file}: not a valid tokenizer.json ({e})") from None
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = {}
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    config = json.load(f)
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
        eos = _token_text(config.get("eos_token"))
        if eos is None:
            raise TokenizerError(f"{config_path}: no eos_token (needed to stop sampling)")
        return cls(raw, eos, _token_text(config.get("pad_token")), _token_text(config.get("bos_token")),
                   source=file, extra_stop_ids=_generation_stop_ids(os.path.join(folder, "generation_config.json")))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, piece: str) -> int:
        found = self._tok.token_to_id(piece)
        if found is None:
            raise TokenizerError(f"{self.source}: {piece!r} is not a single token")
        return found

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        bos = [self.bos_id] if add_bos and self.bos_id >= 0 else []
        return bos + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos decode to nothing, other added tokens (`<think>`) to their text."""
        drop = {self.pad_id, self.bos_id, self.eos_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str], *, max_len: int | None = None, pad_to_multiple: int = 1,
                     left_pad: bool = False, add_bos: bool = False, add_eos: bool = False,
                     truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`(ids_BxL int32, lengths_B int32)` padded with pad_id, as `Tokenizer.encode_batch`."""
        from r1jax.tokenizer import pad_rows

        rows = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        return pad_rows(rows, self.pad_id, max_len=max_len, pad_to_multiple=pad_to_multiple,
                        left_pad=left_pad, truncate=truncate)
