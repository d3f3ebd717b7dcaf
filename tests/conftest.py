"""Shared fixtures: paths to the real data beside the repository (../shared/data) and to the repo itself."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"  # ../shared/data/llama2-tokenizer


# Modules by measured run time, longest first (`make test` prints the slowest tests). `make test` runs with
# `--dist loadscope --no-loadscope-reorder`: each module goes whole to one of the 2 workers, in this order, so
# the long ones start at once instead of last (xdist's default order is by number of tests, which put the
# few-test, many-minute modules at the end of the run).
LONGEST_FIRST = (
    "tests/test_fresh_clone.py",
    "tests/test_smollm2_preset.py",
    "tests/train/test_training_assets.py",
    "tests/train/test_multinode.py",
)


def pytest_collection_modifyitems(config, items):
    """Modules in LONGEST_FIRST first, then those holding a slow test, then the rest, each in its own order."""

    def rank(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path))
        return (1 if item.get_closest_marker("slow") else 2, 0)  # a module with one slow test ranks as slow

    modules: dict[str, tuple[int, int]] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        modules[path] = min(modules.get(path, (9, 0)), rank(item))
    items.sort(key=lambda item: modules[item.nodeid.split("::")[0]])  # stable: a module's tests keep their order


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


def write_gguf_tokenizer(path: Path, **replace) -> Path:
    """A GGUF file with tokenizer metadata and no tensors, written by the `gguf` package.

    By default a tiny SmolLM2-like byte-level BPE: three control tokens (ids 0-2, EOS and padding 2, no BOS added),
    the 256 byte pieces and a few merges, so every non-ASCII character spans several tokens. A keyword replaces
    `tokenizer.ggml.<keyword>`, or leaves it out when None.
    """
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "d e", "de f", "Ġ Ġ", "ĠĠ ĠĠ", "Ġ r", "Ġr e", "Ġre t"]
    tokens = specials + sorted(ByteLevel.alphabet()) + [m.replace(" ", "") for m in merges]
    metadata = {
        "model": "gpt2",
        "pre": "smollm",
        "tokens": tokens,
        "token_type": [3] * len(specials) + [1] * (len(tokens) - len(specials)),
        "merges": merges,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unknown_token_id": 0,
        "padding_token_id": 2,
        "add_bos_token": False,
        **replace,
    }
    writer = gguf.GGUFWriter(path, arch="llama")
    for name, value in metadata.items():
        key = f"tokenizer.ggml.{name}"
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path
