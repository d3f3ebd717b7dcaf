"""Generate `dvc.yaml` from the Dagster asset graph: one stage per asset, so the graph is defined once.

A stage's `cmd` materializes its asset through Dagster (`wmtp materialize <asset>`), its deps are the upstream
assets' storage directories, the code that computes it and the external inputs its params name (see
`dagster_defs.versions`), its params are its section of params.yaml, and its out is its storage directory.
Pointing params.yaml at other external files changes the deps: regenerate then (`wmtp dvc-yaml --check` says).

With `WMTP_PARAMS` naming another params file of the repository (e.g. `presets/7b_1t_4.yaml`), every stage
lists its keys under that file (`params: [{presets/7b_1t_4.yaml: [keys]}]`, DVC's syntax for a params file
other than params.yaml) and its cmd sets `WMTP_PARAMS` itself, so `dvc repro` computes with the file DVC
tracks whatever the shell's environment says. Without it the output is the committed dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dagster_defs.versions import REPO, ParamsFile, code_deps, external_inputs, params_section, section_keys
from wmtp_core.config import DEFAULT_PARAMS, PARAMS_ENV, params_file

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


def other_params_file(params_path: Path) -> str | None:
    """`params_path` relative to the repository, or None when it is the repository's params.yaml."""
    path = Path(params_path).resolve()
    if path == REPO / DEFAULT_PARAMS:
        return None
    if not path.is_file():
        raise ValueError(f"{PARAMS_ENV}={params_path}: no such params file")
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        raise ValueError(
            f"{PARAMS_ENV}={params_path}: DVC reads stage params from files of the repository {REPO}; "
            "put the params file inside it (e.g. presets/)"
        ) from None


def stages(defs: dg.Definitions, params_path: Path | None = None) -> dict[str, dict[str, Any]]:
    """One stage per asset; `params_path` None: the file `$WMTP_PARAMS` names, else the repo's params.yaml."""
    graph = defs.resolve_asset_graph()
    params_path = params_file(REPO) if params_path is None else Path(params_path)
    params = ParamsFile.read(params_path)
    other = other_params_file(params_path)
    out: dict[str, dict[str, Any]] = {}
    for key in _toposorted(graph):
        node = graph.get(key)
        name = key.to_user_string()
        group = node.group_name
        upstream = [storage_dir(graph.get(k).group_name, k.to_user_string()) for k in upstream_keys(graph, key)]
        section = params_section(name, group, dict(node.metadata))
        code = code_deps(defs.resolve_assets_def(key))
        cmd = f"wmtp materialize {name}"
        stage: dict[str, Any] = {
            "cmd": cmd if other is None else f"{PARAMS_ENV}={other} {cmd}",
            "deps": _without_nested(set(upstream) | set(code) | set(external_inputs(section, params))),
        }
        if section:
            stage["params"] = section_keys(section) if other is None else [{other: section_keys(section)}]
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


def plots(defs: dg.Definitions) -> list[str]:
    """Images the assets declare (`dvc/plots`: loss curves, pass@k, ...), for `dvc plots show`; top-level for
    the same reason as the metrics."""
    graph = defs.resolve_asset_graph()
    return sorted({m for k in graph.get_all_asset_keys() for m in graph.get(k).metadata.get("dvc/plots", [])})


def render(defs: dg.Definitions, params_path: Path | None = None) -> str:
    params_path = params_file(REPO) if params_path is None else Path(params_path)
    document: dict[str, Any] = {"stages": stages(defs, params_path)}
    if found := metrics(defs):
        document["metrics"] = found
    if found := plots(defs):
        document["plots"] = found
    header = HEADER
    if other := other_params_file(params_path):
        header += f"# Stage params from {other} ({PARAMS_ENV}), not params.yaml.\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


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
