"""A byte-level BPE tokenizer.json like Qwen2.5's, trained offline for tests (Hugging Face `tokenizers`)."""
import json
import pathlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]


def write_bpe_tokenizer(folder: pathlib.Path, texts: Iterable[str], vocab_size: int, config: dict) -> int:
    """Train on `texts`, write folder/tokenizer.json and folder/tokenizer_config.json (`config`); the vocab size."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(list(texts), trainer)
    raw.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return raw.get_vocab_size()
