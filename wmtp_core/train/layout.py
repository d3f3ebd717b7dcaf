"""Where training assets live and what each recipe produces: names only, so code that reads a training asset
(the evaluations, the report) depends on this and not on the trainer."""

from __future__ import annotations

from pathlib import Path

from wmtp_core.model.io import METADATA_FILE

GROUP = "training"
# recipe -> the asset it produces
ASSET = {
    "critic": "critic",
    "reference": "reference_tuned",
    "baseline": "policy_baseline",
    "verifiable": "policy_verifiable",
    "rho1": "policy_rho1",
    "random_matched": "policy_random_matched",
    "shuffled": "policy_shuffled",
}
# recipe -> (storage group, asset) of the model it starts from
START_FROM = {
    "critic": ("models", "base_model"),
    "reference": ("models", "reference_model"),
    "baseline": ("models", "base_model"),
    "verifiable": (GROUP, "critic"),
    "rho1": ("models", "base_model"),
    "random_matched": (GROUP, "critic"),
    "shuffled": (GROUP, "critic"),
}
WEIGHTED = ("verifiable", "random_matched", "shuffled")  # TD weights from the critic's value head
MODEL_SUBDIR = "model"  # a training asset holds its model directory here, beside the run's logs and plots


def model_dir(asset_dir: str | Path) -> Path:
    """The model directory inside a training asset (a `models` asset is itself the model directory)."""
    asset_dir = Path(asset_dir)
    return asset_dir / MODEL_SUBDIR if (asset_dir / MODEL_SUBDIR / METADATA_FILE).is_file() else asset_dir
