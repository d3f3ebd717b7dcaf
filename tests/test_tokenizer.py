"""The tokenizer layer: a stored tokenizer is verified against its asset's manifest once, as it is loaded."""

from __future__ import annotations

import shutil

import pytest

from wmtp_core.storage import publish
from wmtp_core.tokenizer import Tokenizer, TokenizerError


def test_stored_tokenizer_is_checked_against_its_manifest(tmp_path, llama2_tokenizer):
    stored = tmp_path / "tokenizer"
    publish(stored, lambda tmp: shutil.copyfile(llama2_tokenizer, tmp / "tokenizer.model") and None)
    tok = Tokenizer.from_directory(stored)
    assert tok.vocab_size == 32000
    with open(stored / "tokenizer.model", "r+b") as f:
        f.seek(100)
        f.write(b"\0")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: SHA256 .* does not match"):
        Tokenizer.from_directory(stored)


def test_a_directory_without_a_listed_tokenizer_is_named(tmp_path):
    stored = tmp_path / "tokenizer"
    publish(stored, lambda tmp: (tmp / "other.txt").write_text("x") and None)
    with pytest.raises(TokenizerError, match=r"tokenizer: its manifest lists no tokenizer\.model"):
        Tokenizer.from_directory(stored)
