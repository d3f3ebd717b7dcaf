"""Fixtures of the training tests: the assets a training job reads, materialized once into a temporary root.

The root holds `params.yaml` (the repository's, with training shrunk to a few steps) and `storage/`. Tests that
write training assets copy it first (`training_root`), so each starts from the same inputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets import data, models, sources
from dagster_defs.resources import build_resources

INPUT_ASSETS = [sources.codecontests_raw, sources.tokenizer, data.codecontests_processed, data.codecontests_index,
                models.base_model, models.reference_model]  # fmt: skip


def small_training(params: dict, **defaults) -> dict:
    """params.yaml's content with every recipe trained for a few steps (block values override `defaults`)."""
    params = dict(params)
    train = dict(params["train"])
    train["defaults"] = {**train["defaults"], "max_steps": 3, "epochs": None, "eval_every": 3,
                         "checkpoint_every": 2, "eval_rows": 4, **defaults}  # fmt: skip
    for recipe, block in train.items():  # a recipe's own limit (the critic trains longer) would override it
        if recipe != "defaults" and isinstance(block, dict):
            train[recipe] = {k: v for k, v in block.items() if k not in ("max_steps", "epochs")}
    params["train"] = train
    return params


@pytest.fixture(scope="session")
def inputs_root(tmp_path_factory, repo_root: Path) -> Path:
    root = tmp_path_factory.mktemp("train_inputs")
    params = small_training(yaml.safe_load((repo_root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dg.materialize(INPUT_ASSETS, resources=build_resources(root / "storage", root / "params.yaml"))
    assert result.success
    return root


@pytest.fixture
def training_root(inputs_root: Path, tmp_path: Path) -> Path:
    """A private copy of the inputs (storage and params.yaml) for a test that trains."""
    root = tmp_path / "project"
    shutil.copytree(inputs_root, root, symlinks=True)
    return root
