"""params.yaml: the committed file validates, names every section DVC tracks, and bad keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wmtp_core.config import ConfigError, Params, load_params


def test_committed_params_validate_and_write_out_every_section(repo_root):
    params = load_params(repo_root / "params.yaml")
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    # DVC reads stage params from the file itself, so defaults must be written out, not left implicit.
    assert set(raw) == set(Params.model_fields)
    assert params.tokenizer.vocab_size == 1024 and params.base_model.source == "micro"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tokenizer: {vocab: 3}\n", "tokenizer.vocab: unknown key"),
        ("no_such_asset: {}\n", "no_such_asset: unknown key"),
        ("tokenizer: {vocab_size: many}\n", "tokenizer.vocab_size: Input should be a valid integer"),
        (
            "tokenizer: {vocab_size: 100}\n",
            "tokenizer.vocab_size: Input should be greater than or equal to 260",
        ),
        ("tokenizer: {path: t.model}\n", "tokenizer.sha256 must be set too"),
        ("tokenizer: {path: t.model, sha256: abc}\n", "tokenizer.sha256: expected 64 hexadecimal digits"),
        ("base_model: {source: meta}\n", "base_model.meta_dir must name the weights directory"),
        ("reference_model: {source: onnx}\n", "reference_model.source: Input should be 'micro', 'hf' or 'gguf'"),
        ("reference_model: {source: gguf}\n", "reference_model.gguf_file must name the GGUF file"),
        ("base_model: {source: gguf}\n", "base_model.gguf_file must name the GGUF file"),
        (
            "base_model: {source: gguf, gguf_file: m.gguf, n_future: 0}\n",
            "base_model.n_future: Input should be greater than or equal to 1",
        ),
        (
            "codecontests_raw: {splits: [dev]}\n",
            "codecontests_raw.splits.0: Input should be 'train', 'valid' or 'test'",
        ),
        ("- a list\n", "expected a mapping of sections"),
        ("tokenizer: {vocab_size: [1\n", "not valid YAML"),
    ],
)
def test_bad_params_name_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params.yaml: params file not found"):
        load_params(tmp_path / "params.yaml")


def test_sections_are_frozen_and_sha256_normalised(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tokenizer: {path: t.model, sha256: '" + "AB" * 32 + "'}\n")
    params = load_params(path)
    assert params.tokenizer.sha256 == "ab" * 32
    with pytest.raises(ValueError):
        params.tokenizer.vocab_size = 2  # type: ignore[misc]


def _path_fields(model: type, prefix: str = "") -> dict[str, object]:
    """Every field of params.yaml (nested sections included) whose name says it holds a file or directory."""
    from pydantic import BaseModel

    found: dict[str, object] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            found |= _path_fields(inner[0], f"{prefix}{name}.")
        elif name == "path" or name.endswith(("_dir", "_path", "_file")):
            found[f"{prefix}{name}"] = field
    return found


def test_every_path_key_resolves_against_params_yaml_not_the_working_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        "codecontests_raw: {path: data/cc}\n"
        "tokenizer: {path: ../models/tok.model, sha256: '" + "0" * 64 + "'}\n"
        "base_model: {source: meta, meta_dir: weights/7B_1T_4, gguf_file: weights/policy.gguf}\n"
        "reference_model: {source: hf, hf_dir: weights/ref, gguf_file: /abs/ref.gguf}\n"
        "mbpp_processed: {path: eval/mbpp.jsonl}\n"
        "humaneval_processed: {path: /abs/HumanEval.jsonl.gz}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    params = load_params("../project/params.yaml")
    resolved = {
        "codecontests_raw.path": params.codecontests_raw.path,
        "tokenizer.path": params.tokenizer.path,
        "base_model.meta_dir": params.base_model.meta_dir,
        "base_model.gguf_file": params.base_model.gguf_file,
        "reference_model.hf_dir": params.reference_model.hf_dir,
        "reference_model.gguf_file": params.reference_model.gguf_file,
        "mbpp_processed.path": params.mbpp_processed.path,
        "humaneval_processed.path": params.humaneval_processed.path,
    }
    # Every path-like key of the model is covered above, so a new one cannot slip in unresolved.
    assert set(resolved) == set(_path_fields(Params))
    assert resolved == {
        "codecontests_raw.path": project / "data/cc",
        "tokenizer.path": tmp_path / "models/tok.model",
        "base_model.meta_dir": project / "weights/7B_1T_4",
        "base_model.gguf_file": project / "weights/policy.gguf",
        "reference_model.hf_dir": project / "weights/ref",
        "reference_model.gguf_file": Path("/abs/ref.gguf"),
        "mbpp_processed.path": project / "eval/mbpp.jsonl",
        "humaneval_processed.path": Path("/abs/HumanEval.jsonl.gz"),
    }
