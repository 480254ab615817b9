"""Compact word-level tokenizer for the demo's toy CLIP.

The real pipeline tokenises with open_clip's BPE tokenizer (49,408 tokens). A CLIP trained from
scratch on a synthetic corpus of ~100 words needs a vocabulary of ~100, so the toy CLIP uses this
word-level tokenizer instead. It behaves like open_clip's tokenizer where the model depends on it:

- output: ``LongTensor[n, context_length]``: start token, word ids, end token, then 0-padding;
- the end-of-text token has the **largest id**, because open_clip's text tower pools the token at
  ``argmax(ids)`` (environment.md, CLIP training trap);
- texts longer than the context are truncated and still end with the end token.

Saved as a small JSON file (``{"format": ..., "context_length": ..., "vocab": [...]}``) beside
the toy model's open_clip config, so the loader finds it again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FORMAT = "qaclims-word-tokenizer-v1"
PAD, SOT, UNK, EOT = "<pad>", "<start_of_text>", "<unk>", "<end_of_text>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters and digits; punctuation dropped)."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer with open_clip's tensor layout (see the module docstring)."""

    def __init__(self, words: Iterable[str], context_length: int = 16):
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        specials = {PAD, SOT, UNK, EOT}
        unique = sorted({w for text in words for w in split_words(text)} - specials)
        # Layout: pad=0 (open_clip pads with 0), start, unknown, words..., end = largest id.
        self.vocab: list[str] = [PAD, SOT, UNK, *unique, EOT]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = int(context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def sot_id(self) -> int:
        return self.index[SOT]

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def eot_id(self) -> int:
        return len(self.vocab) - 1

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with start and end tokens, truncated to the context length."""
        ids = [self.index.get(w, self.unk_id) for w in split_words(text)]
        ids = ids[: self.context_length - 2]
        return [self.sot_id, *ids, self.eot_id]

    def decode(self, ids: Sequence[int]) -> str:
        skip = {self.pad_id, self.sot_id, self.eot_id}
        return " ".join(self.vocab[i] for i in ids if int(i) not in skip)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Any:
        """Tokenise to ``LongTensor[n, context_length]`` like ``open_clip.tokenize``."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        n_ctx = self.context_length if context_length is None else int(context_length)
        out = torch.zeros(len(texts), n_ctx, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > n_ctx:
                ids = [*ids[: n_ctx - 1], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def unknown_words(self, texts: Iterable[str]) -> set[str]:
        """Words of ``texts`` that would map to the unknown token (for corpus checks)."""
        return {w for t in texts for w in split_words(t) if w not in self.index}

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "context_length": self.context_length, "vocab": self.vocab}

    def save(self, path: str | os.PathLike[str]) -> Path:
        from qaclims.store import write_json

        write_json(self.to_dict(), path)
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} tokenizer (format={data.get('format')!r})")
        vocab = list(data["vocab"])
        if vocab[:3] != [PAD, SOT, UNK] or vocab[-1] != EOT:
            raise ValueError("tokenizer vocab must start with <pad>, <start_of_text>, <unk> and "
                             "end with <end_of_text> (the largest id)")
        tok = cls.__new__(cls)
        tok.vocab = vocab
        tok.index = {w: i for i, w in enumerate(vocab)}
        tok.context_length = int(data["context_length"])
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WordTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text()))
