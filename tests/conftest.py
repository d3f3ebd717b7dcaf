"""Shared fixtures: paths to the real data beside the repository (../shared/data) and to the repo itself."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"  # ../shared/data/llama2-tokenizer


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous, a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flip_byte(path: Path, at: int = -5) -> None:
    """Corrupt one byte of a file in place, keeping its size (only a hash can tell)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Two xdist workers share 2 cores; two intra-op threads per worker would spin against each other and a tiny
    # model trains several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
