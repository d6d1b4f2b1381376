"""The whitespace word tokenizer WordEmbeddings and BoW use, in sentence-transformers' on-disk format."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable

from embedder.modules.base import read_json_file

CONFIG_FILE = "whitespacetokenizer_config.json"
# The class path we write into configs: the historical location every sentence-transformers version imports.
CLASS_PATH = "sentence_transformers.models.tokenizer.WhitespaceTokenizer.WhitespaceTokenizer"


class WhitespaceTokenizer:
    """Split on whitespace, drop stop words, map known words to ids (trying the word, then stripped, then lowercased)."""

    def __init__(
        self, vocab: Iterable[str] = (), stop_words: Iterable[str] = (), do_lower_case: bool = False
    ) -> None:
        self.stop_words = set(stop_words)
        self.do_lower_case = bool(do_lower_case)
        self.set_vocab(vocab)

    def set_vocab(self, vocab: Iterable[str]) -> None:
        """Replace the vocabulary; a repeated word keeps its last index, as sentence-transformers does."""
        self.vocab = list(vocab)
        self.word2idx = {word: idx for idx, word in enumerate(self.vocab)}

    def get_vocab(self) -> list[str]:
        """The vocabulary in id order."""
        return self.vocab

    def tokenize(self, text: str) -> list[int]:
        """Word ids of `text`; unknown words and stop words are dropped."""
        if self.do_lower_case:
            text = text.lower()
        ids: list[int] = []
        for word in text.split():
            idx = self._lookup(word)
            if idx is not None:
                ids.append(idx)
        return ids

    def _lookup(self, word: str) -> int | None:
        # The candidate order and the stop-word check before each lookup follow sentence-transformers exactly.
        # (Only the stripped form must be non-empty to match; sentence-transformers skips that check for the others.)
        stripped = word.strip(string.punctuation)
        for candidate, may_be_empty in ((word, True), (stripped, False), (stripped.lower(), True)):
            if candidate in self.stop_words:
                return None
            if (candidate or may_be_empty) and candidate in self.word2idx:
                return self.word2idx[candidate]
        return None

    def save(self, path: str) -> None:
        """Write `whitespacetokenizer_config.json` (vocab, stop_words, do_lower_case)."""
        os.makedirs(path, exist_ok=True)
        config = {
            # The vocab as the word -> id map sees it (for a repeated word, its last position wins).
            "vocab": list(self.word2idx),
            "stop_words": sorted(self.stop_words),
            "do_lower_case": self.do_lower_case,
        }
        with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f)

    @classmethod
    def load(cls, path: str) -> WhitespaceTokenizer:
        """Read `whitespacetokenizer_config.json` from `path`."""
        file = os.path.join(path, CONFIG_FILE)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (the WhitespaceTokenizer's vocabulary)")
        config = read_json_file(file)
        return cls(
            vocab=config.get("vocab", []),
            stop_words=config.get("stop_words", []),
            do_lower_case=config.get("do_lower_case", False),
        )


def check_tokenizer_class(class_path: str, where: str) -> None:
    """Only the whitespace tokenizer is supported; its path is matched by class name, never imported."""
    name = class_path.rsplit(".", 1)[-1]
    if name != "WhitespaceTokenizer":
        raise ValueError(
            f"{where}: tokenizer_class {class_path!r} is not supported; supported: ['WhitespaceTokenizer'] "
            "(tokenizer classes named in a config are never imported)"
        )
