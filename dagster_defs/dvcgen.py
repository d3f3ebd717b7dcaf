"""Generate `dvc.yaml` from the Dagster asset graph: one stage per asset, so the graph is defined once.

A stage's `cmd` materializes its asset through Dagster (`wmtp materialize <asset>`), its deps are the upstream
assets' storage directories plus the code that computes it (the asset's module and the wmtp_core modules that
module uses), its params are its section of params.yaml, and its out is its storage directory.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

import assets
from wmtp_core.config import Params

REPO = Path(assets.__file__).resolve().parents[1]
HEADER = "# Generated from the Dagster asset graph by `wmtp dvc-yaml`; do not edit (a test compares it).\n"


def storage_dir(group: str, name: str) -> str:
    return f"storage/{group}/{name}"


def params_section(name: str, group: str, metadata: dict[str, Any]) -> str | None:
    """The params.yaml section an asset reads: `dvc/params` metadata, else its own name, else its group's."""
    if "dvc/params" in metadata:
        return metadata["dvc/params"]
    for key in (name, group):
        if key in Params.model_fields:
            return key
    return None


def _repo_path(path: str | Path) -> str | None:
    p = Path(path).resolve()
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else None


def _imported_wmtp_core(source: str) -> set[str]:
    """Modules of wmtp_core that a module's source imports (`from pkg import mod` counts as `pkg.mod`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("wmtp_core")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wmtp_core"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if isinstance(sys.modules.get(sub), types.ModuleType) else node.module)
    return names


def code_deps(assets_def: dg.AssetsDefinition) -> list[str]:
    """The asset's module file and every wmtp_core module (file) or package (directory) it imports."""
    fn = assets_def.op.compute_fn
    module = sys.modules[getattr(fn, "decorated_fn", fn).__module__]
    found = {_repo_path(module.__file__)}
    for name in _imported_wmtp_core(Path(module.__file__).read_text()):
        mod = importlib.import_module(name)
        if hasattr(mod, "__path__"):  # a package: the whole directory (.dvcignore drops __pycache__)
            found.add(_repo_path(Path(mod.__file__).parent))
        else:
            found.add(_repo_path(mod.__file__))
    return sorted(p for p in found if p)


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


def stages(defs: dg.Definitions) -> dict[str, dict[str, Any]]:
    graph = defs.resolve_asset_graph()
    out: dict[str, dict[str, Any]] = {}
    for key in _toposorted(graph):
        node = graph.get(key)
        name = key.to_user_string()
        group = node.group_name
        upstream = [storage_dir(graph.get(k).group_name, k.to_user_string()) for k in upstream_keys(graph, key)]
        extra = list(node.metadata.get("dvc/deps", []))
        stage: dict[str, Any] = {
            "cmd": f"wmtp materialize {name}",
            "deps": _without_nested(
                set(upstream) | set(code_deps(defs.resolve_assets_def(key))) | set(extra)
            ),
        }
        section = params_section(name, group, dict(node.metadata))
        if section:
            stage["params"] = [section]
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


def render(defs: dg.Definitions) -> str:
    document: dict[str, Any] = {"stages": stages(defs)}
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
