"""One `Definitions`: every asset and asset check of the `assets` package, the resources, and the main job.

Assets are collected from the whole package, so a new module under `assets/` joins the graph without an edit
here.
"""

from __future__ import annotations

import dagster as dg

import assets
from dagster_defs.resources import build_resources

MAIN_JOB = "main"


def build_definitions(storage_root: str | None = None, params_path: str | None = None) -> dg.Definitions:
    all_assets = dg.load_assets_from_package_module(assets)
    checks = dg.load_asset_checks_from_package_module(assets)
    main = dg.define_asset_job(
        MAIN_JOB, selection=dg.AssetSelection.all(), description="every asset, in order"
    )
    return dg.Definitions(
        assets=all_assets,
        asset_checks=checks,
        jobs=[main],
        resources=build_resources(storage_root, params_path),
    )


defs = build_definitions()
