"""Generate `dvc.yaml` from the Dagster asset graph: one stage per asset, so the graph is defined once.

A stage's `cmd` materializes its asset through Dagster (`wmtp materialize <asset>`), its deps are the upstream
assets' storage directories, the code that computes it and the external inputs its params name (see
`dagster_defs.versions`), its params are its section of params.yaml, and its out is its storage directory.
Pointing params.yaml at other external files changes the deps: regenerate then (`wmtp dvc-yaml --check` says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dagster_defs.versions import REPO, ParamsFile, code_deps, external_inputs, params_section, section_keys

HEADER = "# Generated from the Dagster asset graph by `wmtp dvc-yaml`; do not edit (a test compares it).\n"


def storage_dir(group: str, name: str) -> str:
    return f"storage/{group}/{name}"


def _without_nested(paths: set[str]) -> list[str]:
    """Sorted paths minus those inside another listed directory (DVC would hash them twice)."""
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def upstream_keys(graph, key: dg.AssetKey) -> set[dg.AssetKey]:
    """An asset's parents plus the other assets its checks read (a check runs in the asset's stage)."""
    found = set(graph.get(key).parent_keys)
    for check_key in graph.asset_check_keys:
        if check_key.asset_key == key:
            found |= set(graph.get(check_key).parent_entity_keys) - {key}
    return found


def _toposorted(graph) -> list[dg.AssetKey]:
    keys = set(graph.get_all_asset_keys())
    done: list[dg.AssetKey] = []
    placed: set[dg.AssetKey] = set()
    while len(done) < len(keys):
        ready = sorted(
            (k for k in keys - placed if upstream_keys(graph, k) & keys <= placed),
            key=lambda k: k.to_user_string(),
        )
        if not ready:
            raise ValueError(
                f"asset graph has a cycle among {sorted(k.to_user_string() for k in keys - placed)}"
            )
        done += ready
        placed |= set(ready)
    return done


def stages(defs: dg.Definitions, params_path: Path = REPO / "params.yaml") -> dict[str, dict[str, Any]]:
    graph = defs.resolve_asset_graph()
    params = ParamsFile.read(params_path)
    out: dict[str, dict[str, Any]] = {}
    for key in _toposorted(graph):
        node = graph.get(key)
        name = key.to_user_string()
        group = node.group_name
        upstream = [storage_dir(graph.get(k).group_name, k.to_user_string()) for k in upstream_keys(graph, key)]
        section = params_section(name, group, dict(node.metadata))
        code = code_deps(defs.resolve_assets_def(key))
        stage: dict[str, Any] = {
            "cmd": f"wmtp materialize {name}",
            "deps": _without_nested(set(upstream) | set(code) | set(external_inputs(section, params))),
        }
        if section:
            stage["params"] = section_keys(section)
        stage["outs"] = [storage_dir(group, name)]
        out[name] = stage
    return out


def metrics(defs: dg.Definitions) -> list[str]:
    """Metrics files the assets declare (`dvc/metrics`), for `dvc metrics show/diff`.

    Listed at the top level rather than as stage outputs: they sit inside a stage's output directory, and DVC
    forbids overlapping outputs.
    """
    graph = defs.resolve_asset_graph()
    return sorted({m for k in graph.get_all_asset_keys() for m in graph.get(k).metadata.get("dvc/metrics", [])})


def render(defs: dg.Definitions, params_path: Path = REPO / "params.yaml") -> str:
    document: dict[str, Any] = {"stages": stages(defs, params_path)}
    if found := metrics(defs):
        document["metrics"] = found
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


def edges(defs: dg.Definitions, *, with_checks: bool = True) -> set[tuple[str, str]]:
    """(upstream, downstream) asset names of the Dagster graph, to compare with `dvc dag`.

    With `with_checks`, an asset also depends on what its checks read, as its DVC stage does.
    """
    graph = defs.resolve_asset_graph()
    return {
        (parent.to_user_string(), key.to_user_string())
        for key in graph.get_all_asset_keys()
        for parent in (upstream_keys(graph, key) if with_checks else graph.get(key).parent_keys)
    }
