"""Fixtures of the asset tests: the source and model assets materialized once into a temporary storage root."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets import models, sources
from dagster_defs.resources import build_resources

FRAME_ASSETS = [sources.codecontests_raw, sources.tokenizer, models.base_model, models.reference_model]
FRAME_CHECKS = [
    sources.codecontests_labels_agree,
    sources.codecontests_schema_matches,
    sources.tokenizer_matches_params,
    models.base_model_consistent,
    models.reference_model_consistent,
]


def materialize_frame(root: Path, params_text: str, selection=None) -> dg.ExecuteInProcessResult:
    """Materialize the source and model assets (and their checks) under `root`/storage with these params."""
    (root / "params.yaml").write_text(params_text)
    return dg.materialize(
        [*FRAME_ASSETS, *FRAME_CHECKS],
        resources=build_resources(root / "storage", root / "params.yaml"),
        selection=selection,
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def frame(tmp_path_factory, repo_root: Path) -> tuple[Path, dg.ExecuteInProcessResult]:
    """The committed params.yaml's defaults, materialized: (root holding storage/ and params.yaml, result)."""
    root = tmp_path_factory.mktemp("frame")
    result = materialize_frame(root, (repo_root / "params.yaml").read_text())
    yield root, result
    shutil.rmtree(root, ignore_errors=True)
