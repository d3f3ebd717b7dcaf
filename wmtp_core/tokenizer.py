"""Tokenizers: a SentencePiece model (Llama-2's, or one trained on the corpus) or the byte-level BPE of a GGUF file.

Both kinds have one interface, `Tokenizer`, and one identity, `Tokenizer.sha256`, which models and data record so
later stages can check they share a tokenizer. A tokenizer directory (the `tokenizer` asset) stores one file:
`tokenizer.model` (SentencePiece) or `tokenizer.json` (byte-level BPE, written canonically, so its SHA256 is the
identity).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import tokenizers

from wmtp_core.gguf_metadata import GGUFError, has_gguf_magic, read_gguf_metadata
from wmtp_core.storage import read_manifest, sha256_file

SENTENCEPIECE, BPE = "sentencepiece", "bpe"
TOKENIZER_FILES = {SENTENCEPIECE: "tokenizer.model", BPE: "tokenizer.json"}  # the stored file of each kind
# The block of a stored tokenizer.json that holds what `tokenizers` has no field for (BOS, EOS, padding). The
# `tokenizers` loader rejects unknown keys, so it is taken out before the rest is handed over.
SPECIAL_IDS_KEY = "wmtp"


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """Token ids of text, the same way for a SentencePiece model and for a byte-level BPE.

    The kind follows the file: `.gguf` (or GGUF's magic bytes) is the byte-level BPE described by the file's
    `tokenizer.ggml.*` metadata, run by the `tokenizers` package; `.json` is a tokenizer.json that `save` wrote;
    anything else is a SentencePiece model.

    `sha256`, checked against `expected_sha256`, identifies what the tokenizer does: for SentencePiece the model
    file's SHA256; for BPE that of its canonical tokenizer.json (the bytes `save` writes), so a GGUF file and the
    tokenizer.json stored from it have one identity, and the GGUF's weights do not enter it.

    BOS: `encode(bos=True)` adds `bos_id` only where the model was trained with it: always for SentencePiece
    (Llama-2 convention), and for a GGUF file as its `tokenizer.ggml.add_bos_token` says. SmolLM2's says no, so
    there `bos=True` adds nothing; `bos_id` still names the file's BOS token. `eos=True` always appends `eos_id`:
    training responses end with it.

    Specials: GGUF control tokens (`<|im_end|>`, `<repo_name>`, ...) are special tokens, so their text in the
    input becomes their single id. `decode` drops nothing the ids hold: control tokens come back as their text,
    so `decode(encode(s)) == s` holds for text with specials too, and a control token a model generates (say
    `<|endoftext|>` inside a completion) shows in the completion instead of vanishing from it. A caller that
    must not show EOS cuts it first, as the generator does. SentencePiece differs as its library does: `</s>`
    in text is plain characters, and decoding drops the control pieces `<s>` and `</s>`.

    A byte-level token can hold part of a multi-byte UTF-8 character: ids that end inside one decode with
    U+FFFD in its place, and the character appears once the ids that complete it are decoded with them.
    A byte the vocabulary has no piece for is dropped when encoding, as llama.cpp and `transformers` drop it
    (SmolLM2 lacks the control bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D and the lead bytes 0xF1, 0xF2 of
    characters from U+40000 to U+BFFFF), so only text without such bytes decodes back exactly.
    """

    def __init__(self, path: str | Path, expected_sha256: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer model file not found")
        if self.path.suffix == ".json":
            self._open_bpe(_read_tokenizer_json(self.path), expected_sha256)
        elif self.path.suffix == ".gguf" or has_gguf_magic(self.path):
            try:
                metadata = read_gguf_metadata(self.path)
            except GGUFError as e:
                raise TokenizerError(str(e)) from e
            self._open_bpe(_gguf_tokenizer_json(self.path, metadata), expected_sha256)
        else:
            self._open_sentencepiece(expected_sha256)

    def _open_sentencepiece(self, expected_sha256: str | None) -> None:
        self.kind = SENTENCEPIECE
        self.sha256 = sha256_file(self.path)
        self._check_sha256(expected_sha256)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: not a SentencePiece model ({e})") from e
        self.vocab_size = self._sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()
        self._add_bos = True

    def _open_bpe(self, document: dict[str, Any], expected_sha256: str | None) -> None:
        self.kind = BPE
        self._canonical = _canonical_json(document)
        self.sha256 = hashlib.sha256(self._canonical).hexdigest()
        self._check_sha256(expected_sha256)
        try:
            ids = document[SPECIAL_IDS_KEY]
            self._add_bos = bool(ids["add_bos"])
            self.bos_id, self.eos_id, self.pad_id = int(ids["bos_id"]), int(ids["eos_id"]), int(ids["pad_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(
                f"{self.path}: expected a {SPECIAL_IDS_KEY!r} object with add_bos, bos_id, eos_id and pad_id, "
                f"as Tokenizer.save writes it ({type(e).__name__}: {e})"
            ) from e
        body = {k: v for k, v in document.items() if k != SPECIAL_IDS_KEY}
        try:
            self._bpe = tokenizers.Tokenizer.from_str(json.dumps(body))
        except Exception as e:  # the tokenizers package raises plain Exception
            raise TokenizerError(f"{self.path}: `tokenizers` cannot load its tokenizer ({e})") from e
        self.vocab_size = self._bpe.get_vocab_size(with_added_tokens=True)

    def _check_sha256(self, expected: str | None) -> None:
        if expected and self.sha256 != expected.lower():
            how = (
                " (a byte-level BPE's SHA256 is that of its canonical tokenizer.json)"
                if self.kind == BPE
                else ""
            )
            raise TokenizerError(
                f"{self.path}: SHA256 {self.sha256} does not match the expected {expected}{how}"
            )

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer stored in an asset directory, verified once against its manifest's SHA256."""
        path = tokenizer_file(directory)
        return cls(path, expected_sha256=read_manifest(path.parent)["files"][path.name]["sha256"])

    def save(self, directory: str | Path) -> Path:
        """Write this tokenizer's stored file into `directory`: the SentencePiece model as it is, or the canonical
        tokenizer.json (whose SHA256 is `sha256`) of a byte-level BPE. Returns its path."""
        out = Path(directory) / TOKENIZER_FILES[self.kind]
        if self.kind == SENTENCEPIECE:
            shutil.copyfile(self.path, out)
        else:
            out.write_bytes(self._canonical)
        return out

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = (
            self._sp.encode(text)
            if self.kind == SENTENCEPIECE
            else self._bpe.encode(text, add_special_tokens=False).ids
        )
        return self._with_ends(ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        if self.kind == SENTENCEPIECE:
            batch = self._sp.encode(list(texts))
        else:  # ids only: offsets, which `encode_batch` also computes, are never used here
            batch = [e.ids for e in self._bpe.encode_batch_fast(list(texts), add_special_tokens=False)]
        return [self._with_ends(ids, bos, eos) for ids in batch] if bos or eos else batch

    def _with_ends(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return ([self.bos_id] if bos and self._add_bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        if self.kind == SENTENCEPIECE:
            return self._sp.decode(list(ids))
        return self._bpe.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of id `i` as the tokenizer writes it (`▁def` in SentencePiece, `Ġdef` in
        byte-level BPE), for showing tokens."""
        if not 0 <= i < self.vocab_size:
            raise IndexError(f"token id {i}: outside the vocabulary of {self.path} ({self.vocab_size} ids)")
        return self._sp.id_to_piece(i) if self.kind == SENTENCEPIECE else self._bpe.id_to_token(i)


def tokenizer_file(directory: str | Path) -> Path:
    """The tokenizer file of a stored tokenizer directory: the one of `TOKENIZER_FILES` its manifest lists."""
    directory = Path(directory)
    listed = [name for name in TOKENIZER_FILES.values() if name in read_manifest(directory)["files"]]
    if len(listed) != 1:
        found = " and ".join(listed) if listed else "no " + " or ".join(TOKENIZER_FILES.values())
        raise TokenizerError(f"{directory}: its manifest lists {found}; expected exactly one tokenizer file")
    return directory / listed[0]


def _canonical_json(document: dict[str, Any]) -> bytes:
    """The one serialization of a tokenizer.json document that the BPE identity hashes: sorted keys, no spaces.

    Written by Python's json module rather than by `tokenizers`, so the identity does not change with the
    version of that package.
    """
    return json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _read_tokenizer_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(document, dict) or SPECIAL_IDS_KEY not in document:
        raise TokenizerError(
            f"{path}: no {SPECIAL_IDS_KEY!r} key; expected a tokenizer.json that Tokenizer.save wrote (a plain "
            "Hugging Face tokenizer.json does not say which ids are BOS, EOS and padding)"
        )
    return document


# ---- GGUF ------------------------------------------------------------------------------------------------------

# llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) as `tokenizers` pre-tokenizers. Only names checked id for
# id against a reference are listed: an unknown one must fail rather than split text another way.
_PRE_TOKENIZERS = {
    # SmolLM and SmolLM2: every digit on its own, then GPT-2's byte-level regex.
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
}
# llama.cpp token types; the others (unknown, user-defined, unused, byte) are refused.
_NORMAL, _CONTROL = 1, 3


def _gguf_tokenizer_json(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer.json document (with its special-ids block) of the byte-level BPE a GGUF file describes."""

    def get(key: str) -> Any:
        if key not in metadata:
            raise TokenizerError(f"{path}: GGUF metadata has no {key}")
        return metadata[key]

    model = get("tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(
            f"{path}: tokenizer.ggml.model is {model!r}; expected 'gpt2' (byte-level BPE), the one GGUF "
            "tokenizer supported (a SentencePiece model is given as its .model file)"
        )
    pre = get("tokenizer.ggml.pre")
    if pre not in _PRE_TOKENIZERS:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.pre is {pre!r}; expected one of {sorted(_PRE_TOKENIZERS)}"
        )
    tokens, types, merges = (
        get("tokenizer.ggml.tokens"),
        get("tokenizer.ggml.token_type"),
        get("tokenizer.ggml.merges"),
    )
    if len(types) != len(tokens):
        raise TokenizerError(
            f"{path}: {len(types)} tokenizer.ggml.token_type entries for {len(tokens)} tokenizer.ggml.tokens"
        )
    odd = next((i for i, t in enumerate(types) if t not in (_NORMAL, _CONTROL)), None)
    if odd is not None:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.token_type[{odd}] ({tokens[odd]!r}) is {types[odd]}; expected 1 (normal) "
            "or 3 (control)"
        )
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        first = next(i for i, token in enumerate(tokens) if vocab[token] != i)
        raise TokenizerError(f"{path}: tokens {first} and {vocab[tokens[first]]} are both {tokens[first]!r}")
    pairs = [m.split(" ") for m in merges]
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2), None)
    if bad is not None:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.merges[{bad}] is {merges[bad]!r}; expected two pieces separated by one space"
        )
    bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
    pad = metadata.get(
        "tokenizer.ggml.padding_token_id", -1
    )  # none: -1, as SentencePiece reports a missing piece
    for key, i in [("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad)]:
        if not 0 <= i < len(tokens) and not (key == "padding_token_id" and i == -1):
            raise TokenizerError(f"{path}: tokenizer.ggml.{key} is {i}; expected an id below {len(tokens)}")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(types)
            if t == _CONTROL
        ],  # fmt: skip
        "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZERS[pre],
        "post_processor": None,  # BOS and EOS are added by Tokenizer.encode, as for SentencePiece
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,  # a byte without a piece is dropped, as llama.cpp drops it (see Tokenizer)
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": pairs,
        },
        SPECIAL_IDS_KEY: {
            "add_bos": bool(get("tokenizer.ggml.add_bos_token")),
            "bos_id": bos,
            "eos_id": eos,
            "pad_id": pad,
        },
    }


# ---- training --------------------------------------------------------------------------------------------------


def train_tokenizer(
    texts: Iterable[str], out_file: str | Path, vocab_size: int, *, seed_sentences: int = 0
) -> Path:
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
