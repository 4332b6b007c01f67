"""CLIP's byte-level BPE tokenizer, written from the published algorithm (no ftfy, no tokenizers).

Vocabularies come from a Hugging Face model directory (``vocab.json`` + ``merges.txt``), from
OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, or from :func:`learn_bpe` on a few texts (the class
names of a small data set, for a tiny randomly initialised text tower).

Text is cleaned as OpenAI's tokenizer does, minus ftfy's mojibake repair: HTML entities are
unescaped, the text is NFC-normalised, whitespace runs become one space and letters are lower
case. Each sequence is ``[<|startoftext|>, tokens..., <|endoftext|>]`` padded with zeros to the
context length; the end-of-text token has the largest id, which is how the text encoder finds it.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import json
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
import torch
from torch import Tensor

from ..errors import CheckpointError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"  # suffix of a word's last symbol
CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
HF_VOCAB_FILES = ("vocab.json", "merges.txt")
# OpenAI's file lists more merges than CLIP uses: a 49408-token vocabulary holds 2 x 256 byte
# symbols, 49152 - 256 - 2 merges and the two special tokens.
OPENAI_NUM_MERGES = 49152 - 256 - 2

# Special tokens, contractions, letter runs, single digits, and runs of anything else.
_WORDS = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (control characters, space...) to
    characters from 256 up, so that BPE symbols never contain whitespace.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(others))]
    return dict(zip(printable + others, map(chr, codes), strict=True))


def clean_text(text: str) -> str:
    """OpenAI's text cleaning without ftfy: unescape HTML (twice, as OpenAI does), NFC,
    collapse whitespace, lower case."""
    text = unicodedata.normalize("NFC", html.unescape(html.unescape(text)))
    return re.sub(r"\s+", " ", text).strip().lower()


def pre_tokenize(text: str) -> list[str]:
    """Words of ``text`` with their UTF-8 bytes spelled as ``bytes_to_unicode`` characters."""
    byte_chars = bytes_to_unicode()
    words = _WORDS.findall(clean_text(text))
    return [w if w in (SOT, EOT) else "".join(byte_chars[b] for b in w.encode()) for w in words]


def vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: byte symbols, the same ending a word, merges, special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
    return {token: i for i, token in enumerate([*tokens, SOT, EOT])}


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by its join."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _initial_symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + END_OF_WORD]


def learn_bpe(texts: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` BPE merges from ``texts``: repeatedly join the most frequent
    adjacent pair (ties: the first pair in sorted order), until every word is one symbol."""
    counts = Counter(w for text in texts for w in pre_tokenize(text) if w not in (SOT, EOT))
    words = {word: _initial_symbols(word) for word in counts}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = max(sorted(pairs), key=pairs.__getitem__)
        merges.append(best)
        words = {word: _merge_pair(symbols, best) for word, symbols in words.items()}
    return merges


class ClipTokenizer:
    """Text → ``[N, context_length]`` token ids, as OpenAI's ``clip.tokenize`` and HF's
    ``CLIPTokenizer`` (padding with 0) produce them."""

    def __init__(
        self, merges: Sequence[tuple[str, str]], vocab: dict[str, int] | None = None
    ) -> None:
        self.merges = [tuple(m) for m in merges]
        self.encoder = vocab if vocab is not None else vocab_from_merges(self.merges)
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, list[int]] = {}  # word → ids; words repeat across prompts

    @property
    def vocab_size(self) -> int:
        """Rows the token embedding needs (the largest id + 1)."""
        return max(self.encoder.values()) + 1

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_hf_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        """Hugging Face ``vocab.json`` and ``merges.txt`` (first line ``#version: ...``)."""
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#")]
        return cls(merges, vocab)

    @classmethod
    def from_openai_file(cls, path: str | os.PathLike):
        """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (a header line, then one merge a line)."""
        lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
        return cls([tuple(line.split()) for line in lines[1 : OPENAI_NUM_MERGES + 1] if line])

    @classmethod
    def from_path(cls, path: str | os.PathLike):
        """A tokenizer from a folder holding ``vocab.json`` + ``merges.txt`` or OpenAI's gz
        file, or from the gz file itself."""
        path = Path(path)
        if path.is_file():
            return cls.from_openai_file(path)
        if all((path / name).is_file() for name in HF_VOCAB_FILES):
            return cls.from_hf_files(*(path / name for name in HF_VOCAB_FILES))
        if (path / OPENAI_VOCAB_FILE).is_file():
            return cls.from_openai_file(path / OPENAI_VOCAB_FILE)
        raise CheckpointError(
            f"{path}: no tokenizer files ({' + '.join(HF_VOCAB_FILES)}, or {OPENAI_VOCAB_FILE})"
        )

    @classmethod
    def learn(cls, texts: Iterable[str], num_merges: int = 1000):
        """A small vocabulary learned from ``texts`` (see :func:`learn_bpe`)."""
        return cls(learn_bpe(texts, num_merges))

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` and ``merges.txt`` in Hugging Face's format."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(json.dumps(self.encoder), encoding="utf-8")
        merges = "".join(f"{a} {b}\n" for a, b in self.merges)
        (directory / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")

    # ---- encoding -----------------------------------------------------------------------------

    def _bpe(self, word: str) -> list[str]:
        """Apply the merges to one pre-token, lowest rank first, until none applies."""
        symbols = _initial_symbols(word)
        while len(symbols) > 1:
            pair = min(itertools.pairwise(symbols), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            symbols = _merge_pair(symbols, pair)
        return symbols

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without the start and end tokens."""
        ids = []
        for word in pre_tokenize(text):
            if word not in self._cache:
                symbols = [word] if word in (SOT, EOT) else self._bpe(word)
                self._cache[word] = [self.encoder[s] for s in symbols]
            ids += self._cache[word]
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> Tensor:
        """``[N, context_length]`` int64 ids: start token, the text's tokens, end token, zeros.

        A text too long for the context is cut, keeping the end token last (as OpenAI's
        ``truncate=True``), so the text encoder still reads its feature at the end token.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: context_length - 1]
            ids.append(self.eot_token_id)
            out[row, : len(ids)] = torch.tensor(ids)
        return out
