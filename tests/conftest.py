"""Shared fixtures: paths to the real data beside the repository (../shared/data) and to the repo itself."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA}: the shared test data must sit beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def llama2_tokenizer(shared_data: Path) -> Path:
    return shared_data / "llama2-tokenizer" / "tokenizer.model"


@pytest.fixture(scope="session")
def mbpp_jsonl(shared_data: Path) -> Path:
    return shared_data / "mbpp" / "mbpp.jsonl"
