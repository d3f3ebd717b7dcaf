"""The `train:` section: defaults merged into each recipe's block, and bad values stopped naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wmtp_core.config import ConfigError, load_params
from wmtp_core.train.params import RECIPES


def load(tmp_path: Path, train: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": train}))
    return load_params(path).train


def test_the_committed_params_resolve_every_recipe(repo_root: Path):
    train = load_params(repo_root / "params.yaml").train
    for recipe in RECIPES:
        cfg = train.recipe(recipe)
        if recipe != "critic":  # the critic's probe trains at its own rate and length
            assert cfg.lr == train.defaults.lr and cfg.epochs == train.defaults.epochs
    assert train.critic.weight_decay == train.defaults.weight_decay
    assert train.verifiable.value_coef == 0.5 and train.verifiable.value_clip == 0.2
    assert train.rho1.ratio == 0.6 and train.rho1.mode == "select"
    assert train.critic.freeze_trunk is True


def test_a_block_overrides_defaults_and_a_step_limit_replaces_epochs(tmp_path: Path):
    train = load(tmp_path, {"defaults": {"lr": 1e-3, "epochs": 2}, "rho1": {"lr": 5e-4, "max_steps": 7},
                            "baseline": {}})  # fmt: skip
    assert train.rho1.lr == 5e-4 and train.rho1.max_steps == 7 and train.rho1.epochs is None
    assert train.baseline.lr == 1e-3 and train.baseline.epochs == 2 and train.baseline.max_steps is None
    assert train.critic.lr == 1e-3  # a recipe without a block takes the defaults
    assert load(tmp_path, {"defaults": {"max_steps": 5}}).verifiable.epochs is None


@pytest.mark.parametrize(
    ("train", "named"),
    [
        ({"verifiable": {"bta": 0.9}}, "train.verifiable.bta: unknown key"),
        ({"rho1": {"ratio": 0.0}}, "train.rho1.ratio"),
        ({"rho1": {"ratio": 1.5}}, "train.rho1.ratio"),
        ({"verifiable": {"beta": 0.0}}, "train.verifiable.beta"),
        ({"shuffled": {"beta": -1.0}}, "train.shuffled.beta"),
        ({"rho1": {"mode": "hard"}}, "train.rho1.mode"),
        ({"verifiable": {"min_weight": 2.0, "max_weight": 1.0}}, "min_weight 2.0 is above max_weight 1.0"),
        ({"baseline": {"max_steps": 3, "epochs": 1}}, "set exactly one of max_steps"),
        ({"critic": {"ratio": 0.5}}, "train.critic.ratio: unknown key"),  # a Rho-1 setting in another recipe
        ({"ppo": {}}, "train.ppo: unknown key"),
    ],
)
def test_bad_values_stop_naming_the_key(tmp_path: Path, train: dict, named: str):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, train)
    assert named in str(err.value)
