"""One `Definitions`: every asset and asset check of the `assets` package, the resources, and the main job.

Assets are collected from the whole package, so a new module under `assets/` joins the graph without an edit
here. Each asset gets a `code_version` hashed from its code deps, its params section and the external inputs
that section names (`dagster_defs.versions`), the same things its DVC stage depends on, so the UI marks an asset
unsynced exactly when `dvc status` reports its stage changed.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

import assets
from dagster_defs.demo import progress
from dagster_defs.resources import build_resources
from dagster_defs.versions import ParamsFile, code_deps, code_version, external_inputs, params_section

MAIN_JOB = "main"


def with_code_versions(assets_def: dg.AssetsDefinition, params: ParamsFile) -> dg.AssetsDefinition:
    deps = code_deps(assets_def)

    def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
        section = params_section(spec.key.to_user_string(), spec.group_name, dict(spec.metadata))
        external = external_inputs(section, params)
        return spec.replace_attributes(code_version=code_version(deps, section, external, params))

    return assets_def.map_asset_specs(versioned)


def build_definitions(storage_root: str | None = None, params_path: str | None = None) -> dg.Definitions:
    resources = build_resources(storage_root, params_path)
    params = ParamsFile.read(Path(resources["params"].path))
    all_assets = [
        with_code_versions(a, params) if isinstance(a, dg.AssetsDefinition) else a
        for a in dg.load_assets_from_package_module(assets)
    ]
    checks = dg.load_asset_checks_from_package_module(assets)
    main = dg.define_asset_job(
        MAIN_JOB, selection=dg.AssetSelection.all(), description="every asset, in order", hooks={progress}
    )
    return dg.Definitions(assets=all_assets, asset_checks=checks, jobs=[main], resources=resources)


defs = build_definitions()
