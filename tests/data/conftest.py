from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LLAMA2_SHA256
from wmtp_core.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def llama2(llama2_tokenizer: Path) -> Tokenizer:
    return Tokenizer(llama2_tokenizer, expected_sha256=LLAMA2_SHA256)


@pytest.fixture(scope="session")
def processed(tmp_path_factory, llama2) -> tuple[Path, dict]:
    """The hub-schema fixture processed once: (output dir, stats)."""
    from tests.data.cc_fixture import write_hub_files
    from wmtp_core.data.prepare import prepare_codecontests

    root = tmp_path_factory.mktemp("cc")
    stats = prepare_codecontests(write_hub_files(root / "source"), root / "out", llama2, progress=False)
    return root / "out", stats
