"""SentencePiece tokenizer: load a given model (e.g. Llama-2's, SHA256-checked) or train one on a corpus."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from wmtp_core.storage import read_manifest, sha256_file

TOKENIZER_FILE = "tokenizer.model"  # the file of a tokenizer directory (the `tokenizer` asset)


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """Thin wrapper over `SentencePieceProcessor` with the ids the model and collator need."""

    def __init__(self, model_file: str | Path, expected_sha256: str | None = None):
        self.path = Path(model_file)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer model file not found")
        self.sha256 = sha256_file(self.path)
        if expected_sha256 and self.sha256 != expected_sha256.lower():
            raise TokenizerError(f"{self.path}: SHA256 {self.sha256} does not match the expected {expected_sha256}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: not a SentencePiece model ({e})") from e

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer stored in an asset directory, verified once against its manifest's SHA256."""
        directory = Path(directory)
        entry = read_manifest(directory)["files"].get(TOKENIZER_FILE)
        if entry is None:
            raise TokenizerError(f"{directory}: its manifest lists no {TOKENIZER_FILE}")
        return cls(directory / TOKENIZER_FILE, expected_sha256=entry["sha256"])

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))


def train_tokenizer(texts: Iterable[str], out_file: str | Path, vocab_size: int, *, seed_sentences: int = 0) -> Path:
    """Train a byte-fallback BPE SentencePiece model on `texts` and write it to `out_file`.

    Byte fallback keeps unseen characters decodable (otherwise they decode as U+2047). Ids 0..2 are unk, bos,
    eos as in Llama-2, so the collator and model treat a trained tokenizer and Llama-2's alike.
    """
    out_file = Path(out_file)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            max_sentence_length=1 << 16,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TokenizerError(f"training a {vocab_size}-piece tokenizer for {out_file} failed: {e}") from e
    out_file.write_bytes(model.getvalue())
    return out_file
