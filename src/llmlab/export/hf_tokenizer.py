"""The run's tokenizer as Hugging Face tokenizer files, built offline from what llmlab already has.

- `gpt2`: vocab.json + merges.txt (what `GPT2Tokenizer` reads) and tokenizer.json (what any
  `tokenizers`-based loader reads), derived from tiktoken's ranks (`llmlab.data.tokenizers`): a
  token's rank is its id, and the merge that created it is found by running byte-pair encoding on
  its bytes with only the lower-ranked merges (Sennrich et al. 2016; the order tiktoken applies
  them in). No download.
- `byte`: a BPE with the 256 byte symbols (id = byte value) and no merges, plus <|endoftext|> = 256:
  byte for byte our ByteTokenizer.
- a trained BPE (`llmlab tokenizer train`): its tokenizer.json is already in the `tokenizers` format.

One difference in use, shared with Hugging Face's own GPT-2: `<|endoftext|>` written in the text
becomes the special token there, while llmlab's `encode` keeps it as plain text.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from llmlab.data.tokenizers import EOT_TEXT, GPT2_PAT_STR, BPETokenizer, ByteTokenizer, GPT2Tokenizer, Tokenizer
from llmlab.errors import LLMLabError


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (Radford et al. 2019, encoder.py): printable Latin-1
    bytes stand for themselves, the other 68 are shifted to U+0100.. in byte order, so a token's
    bytes become a string without whitespace or control characters (the vocab.json keys)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def token_string(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge produced `token`: byte-pair encode its bytes with the merges ranked
    below it; BPE stops at exactly two parts, since the token's own merge is the one left."""
    limit, parts = ranks[token], [bytes([b]) for b in token]
    while len(parts) > 2:
        found = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(found)
        if rank >= limit:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise LLMLabError(f"GPT-2 ranks: token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def gpt2_vocab_merges(ranks: dict[bytes, int], eot_id: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab: token string -> id, merges in rank order) from tiktoken's mergeable ranks."""
    vocab = {token_string(t): r for t, r in ranks.items()}
    vocab[EOT_TEXT] = eot_id
    merges = [merge_of(t, ranks) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    return vocab, [(token_string(a), token_string(b)) for a, b in merges]


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], split_pattern: str | None) -> Any:
    """A `tokenizers.Tokenizer`: optional regex split (tiktoken's own pattern, so the splits are
    the same as llmlab's), byte-level mapping, BPE, <|endoftext|> as the one special token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # HF's, as in data.tokenizers: on use

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if split_pattern is None:
        tok.pre_tokenizer = byte_level
    else:
        split = pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT_TEXT])
    return tok


def hf_tokenizer(tokenizer: Tokenizer) -> tuple[Any, dict[str, Any]]:
    """(tokenizers.Tokenizer, extra files {name: str content}) equivalent to `tokenizer`."""
    from tokenizers import Tokenizer as HFTokenizer  # on use, as above

    if isinstance(tokenizer, GPT2Tokenizer):
        vocab, merges = gpt2_vocab_merges(tokenizer._load_ranks(), tokenizer.eot_id)
        extra = {"vocab.json": json.dumps(vocab, ensure_ascii=False),
                 "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)}
        return _byte_level_bpe(vocab, merges, GPT2_PAT_STR), extra
    if isinstance(tokenizer, ByteTokenizer):
        vocab = {token_string(bytes([b])): b for b in range(256)} | {EOT_TEXT: tokenizer.eot_id}
        return _byte_level_bpe(vocab, [], None), {}
    if isinstance(tokenizer, BPETokenizer):
        return HFTokenizer.from_str(Path(tokenizer.spec[0]).read_text(encoding="utf-8")), {}
    raise LLMLabError(f"tokenizer {tokenizer.name!r} has no Hugging Face export")


def write_tokenizer(tokenizer: Tokenizer, out: Path, model_max_length: int) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json (+ vocab.json, merges.txt for GPT-2) into `out`;
    returns the file names. `AutoTokenizer.from_pretrained(out)` then encodes like llmlab."""
    tok, extra = hf_tokenizer(tokenizer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer" if isinstance(tokenizer, GPT2Tokenizer) else "PreTrainedTokenizerFast",
        "bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": None, "add_prefix_space": False,
        "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
    }
    files = {"tokenizer_config.json": json.dumps(config, indent=2), **extra}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return ["tokenizer.json", *files]
