"""`llmlab tokenizer train`: a GPT-2-style byte-level BPE (HF tokenizers) trained on a corpus's
train split, saved as a tokenizer.json that `llmlab.data.tokenizers.BPETokenizer` reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from llmlab.data.sources import get_source
from llmlab.data.tokenizers import EOT_TEXT, BPETokenizer
from llmlab.errors import DataError
from llmlab.files import write_text_atomic


def train_bpe(
    dataset: str, vocab_size: int, out: str | Path, *, source_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train a GPT-2-style byte-level BPE (HF tokenizers) on the train split; save tokenizer.json.

    The 256 byte symbols are always in the alphabet, so any text round-trips; <|endoftext|> is
    the only special token. Returns {"path", "vocab_size", "hash", "eot_id"}.
    """
    min_vocab = 256 + 1
    if vocab_size < min_vocab:
        raise DataError(f"--vocab-size must be at least {min_vocab} (256 bytes + {EOT_TEXT}), got {vocab_size}")
    out = Path(out)
    if out.suffix != ".json":
        raise DataError(f"--out must be a .json path (a tokenizer.json), got {out}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty(),
    )
    tok.train_from_iterator(get_source(dataset, source_dir).documents("train"), trainer=trainer)
    write_text_atomic(out, tok.to_str(pretty=True))
    trained = BPETokenizer(out)
    return {"path": str(out), "vocab_size": trained.vocab_size, "hash": trained.hash, "eot_id": trained.eot_id}
