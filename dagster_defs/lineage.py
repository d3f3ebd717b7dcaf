"""Asset lineage for a terminal (`wmtp lineage`), and Dagster's selection syntax resolved (`wmtp materialize`).

`asset_lineage` gathers for an asset and each of its ancestors what the Dagster UI shows across several pages,
plus what DVC knows: where it is stored, its data version (SHA256 of its `MANIFEST.json`, the version each
materialization records), its code version (`dagster_defs.versions`), its params section as params.yaml says it
now, its last materialization in DAGSTER_HOME's event log, its DVC stage and `dvc.lock` record, and whether it is
stale. It returns plain data (what `--json` prints); `format_lineage` lays it out as aligned text.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dagster_defs.dvcgen import storage_dir
from dagster_defs.resources import project_root
from dagster_defs.versions import ParamsFile, params_section, section_keys, stale_assets
from wmtp_core.storage import MANIFEST, sha256_file

# Tags Dagster writes on every materialization (dagster._core.definitions.data_version).
_DATA_VERSION_TAG = "dagster/data_version"
_CODE_VERSION_TAG = "dagster/code_version"
# An asset name in Dagster's older clause syntax (`+name`, `name++`, `*name`), as its `parse_clause` reads it.
_CLAUSE = re.compile(r"^\*?\+*([./\w\[\]?-]+)\+*\*?$")
_ABSENT = object()


class SelectionError(ValueError):
    """A selection expression that Dagster cannot parse, that names an unknown asset or selects nothing."""


# ---- selection -----------------------------------------------------------------------------------------------


def toposorted(graph, keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    """`keys` upstream first: by level of the asset graph, then by name."""
    wanted = set(keys)
    return [
        key
        for level in graph.toposorted_asset_keys_by_level
        for key in sorted(level, key=lambda k: k.to_user_string())
        if key in wanted
    ]


def select(graph, expressions: Sequence[str]) -> list[dg.AssetKey]:
    """The union of Dagster selection expressions, upstream first; SelectionError names the expression at fault.

    Each expression is read by `dg.AssetSelection.from_string`, as `define_asset_job(selection=...)` reads it:
    first the current syntax (`key:tokenizer`, `+key:policy_rho1`, `group:training`, `and`/`or`/`not`), then
    the older clauses (`tokenizer`, `+tokenizer`, `tokenizer++`, `*tokenizer`).
    """
    known = {k.to_user_string() for k in graph.get_all_asset_keys()}
    unknown = [m[1] for e in expressions if (m := _CLAUSE.match(e.strip())) and m[1] not in known]
    if unknown:
        raise SelectionError(f"unknown asset(s) {unknown}; known: {sorted(known)}")
    found: set[dg.AssetKey] = set()
    for expression in expressions:
        with warnings.catch_warnings():
            # The parser passes `include_sources` (beta) on every group or `*`; this code location has no sources.
            warnings.simplefilter("ignore", dg.BetaWarning)
            try:
                keys = dg.AssetSelection.from_string(expression).resolve(graph)
            except dg.DagsterError as e:
                raise SelectionError(f"{expression!r} is not an asset selection: {e}") from e
        if not keys:
            groups = sorted({graph.get(k).group_name for k in graph.get_all_asset_keys()})
            raise SelectionError(
                f"{expression!r} selects no asset (groups: {groups}; assets: {sorted(known)})"
            )
        found |= keys
    return toposorted(graph, found)


# ---- lineage -------------------------------------------------------------------------------------------------


def _value(values: dict[str, Any], dotted: str) -> Any:
    """A dotted key's value in params.yaml as written, or _ABSENT."""
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return _ABSENT
        values = values[part]
    return values


def _load_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _out_matches(project: Path, out: dict[str, Any]) -> bool:
    """Whether a `dvc.lock` out still describes what is on disk, by file count and bytes (a content hash of a
    13 GB model is no quick look-up; `dvc status` does that)."""
    path = project / out["path"]
    if "nfiles" in out:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        return path.is_dir() and (len(files), sum(p.stat().st_size for p in files)) == (
            out["nfiles"],
            out.get("size"),
        )
    return path.is_file() and path.stat().st_size == out.get("size")


def _dvc_stage(name: str, project: Path, dvc_yaml: dict, dvc_lock: dict, values: dict) -> dict[str, Any]:
    stage = (dvc_yaml.get("stages") or {}).get(name)
    locked = (dvc_lock.get("stages") or {}).get(name)
    found: dict[str, Any] = {
        "stage": name,
        "in_dvc_yaml": stage is not None,
        "in_dvc_lock": locked is not None,
        "outs_match_lock": None,
        "params_match_lock": None,
    }
    if stage is not None and locked is not None:
        found["outs_match_lock"] = all(_out_matches(project, out) for out in locked.get("outs", []))
        # dvc.lock: {params file: {key: value}} for each key the stage lists.
        recorded = {k: v for per_file in (locked.get("params") or {}).values() for k, v in per_file.items()}
        keys = [k for k in stage.get("params", []) if isinstance(k, str)]
        found["params_match_lock"] = all(k in recorded and recorded[k] == _value(values, k) for k in keys)
    return found


def _last_materialization(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any] | None:
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return None
    tags = event.asset_materialization.tags or {}
    return {
        "time": dt.datetime.fromtimestamp(event.timestamp, dt.UTC).isoformat(timespec="seconds"),
        "run_id": event.run_id,
        "data_version": tags.get(_DATA_VERSION_TAG),
        "code_version": tags.get(_CODE_VERSION_TAG),
    }


def _status(
    last: dict | None, data_version: str | None, stale_reasons: list[str] | None, manifest: Path
) -> tuple[str, list[str]]:
    """One word for the UI's badge, and every reason behind it."""
    reasons = list(stale_reasons or [])
    if last is not None and data_version is None:
        reasons.append(f"{manifest} is missing: the stored asset is gone or incomplete")
    elif last is not None and last["data_version"] not in (None, data_version):
        reasons.append(f"{manifest} differs from the data version recorded at the last materialization")
    if last is None:
        return "never materialized", reasons
    if stale_reasons:
        return "stale", reasons
    return ("changed on disk", reasons) if reasons else ("up to date", reasons)


def asset_lineage(
    defs: dg.Definitions, instance: dg.DagsterInstance, name: str, *, project: Path | None = None
) -> dict[str, Any]:
    """`name` and all its ancestors, upstream first, each with what `wmtp lineage` prints (see the module doc).

    `project` holds dvc.yaml and dvc.lock (default: the project root, `WMTP_ROOT`).
    """
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(name)
    if key not in graph.get_all_asset_keys():
        known = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
        raise SelectionError(f"unknown asset {name!r}; known: {known}")
    project = (project or project_root()).absolute()
    params_path = Path(defs.resources["params"].path)
    values = ParamsFile.read(params_path).values
    storage = defs.resources["storage"]
    dvc_yaml, dvc_lock = _load_yaml(project / "dvc.yaml"), _load_yaml(project / "dvc.lock")
    stale = stale_assets(defs, instance)

    chain = []
    for k in toposorted(graph, dg.AssetSelection.assets(key).upstream().resolve(graph)):
        node, asset = graph.get(k), k.to_user_string()
        manifest = storage.asset_dir(node.group_name, asset) / MANIFEST
        data_version = sha256_file(manifest) if manifest.is_file() else None
        last = _last_materialization(instance, k)
        status, reasons = _status(last, data_version, stale.get(asset), manifest)
        section = params_section(asset, node.group_name, dict(node.metadata))
        current = {dotted: _value(values, dotted) for dotted in section_keys(section)}
        chain.append(
            {
                "asset": asset,
                "group": node.group_name,
                "parents": sorted(p.to_user_string() for p in node.parent_keys),
                "storage": storage_dir(node.group_name, asset),
                "path": str(manifest.parent),
                "data_version": data_version,
                "code_version": node.code_version,
                "params": {dotted: None if v is _ABSENT else v for dotted, v in current.items()},
                "params_absent": [dotted for dotted, v in current.items() if v is _ABSENT],
                "last_materialization": last,
                "dvc": _dvc_stage(asset, project, dvc_yaml, dvc_lock, values),
                "status": status,
                "stale": status != "up to date",
                "reasons": reasons,
            }
        )
    return {
        "asset": name,
        "project": str(project),
        "params_file": str(params_path),
        "storage_root": str(storage.root),
        "dagster_home": str(instance.root_directory),
        "dvc_yaml": str(project / "dvc.yaml"),
        "chain": chain,
    }


# ---- text ----------------------------------------------------------------------------------------------------


def _leaves(prefix: str, value: Any) -> list[str]:
    """`a.b = value` lines, one per leaf of a nested mapping (lists stay inline as JSON)."""
    if isinstance(value, dict) and value:
        return [line for k, v in value.items() for line in _leaves(f"{prefix}.{k}", v)]
    return [f"{prefix} = {json.dumps(value, default=str)}"]


def _dvc_line(dvc: dict[str, Any]) -> str:
    if not dvc["in_dvc_yaml"]:
        return f"{dvc['stage']}: not in dvc.yaml (run `wmtp dvc-yaml`)"
    if not dvc["in_dvc_lock"]:
        return f"{dvc['stage']}; dvc.lock: not recorded (never run by `dvc repro` or `wmtp demo`)"

    def word(ok: bool | None) -> str:
        return "match" if ok else "differ"

    return (
        f"{dvc['stage']}; dvc.lock: recorded, outs {word(dvc['outs_match_lock'])} (files, bytes), "
        f"params {word(dvc['params_match_lock'])}"
    )


def format_lineage(data: dict[str, Any]) -> str:
    """The lineage as aligned text: a header, then one block per asset, upstream first."""
    chain = data["chain"]
    lines = [
        f"lineage of {data['asset']}: {len(chain)} asset(s), upstream first",
        f"  params.yaml   {data['params_file']}",
        f"  storage       {data['storage_root']}",
        f"  DAGSTER_HOME  {data['dagster_home']}",
        f"  dvc.yaml      {data['dvc_yaml']}",
    ]

    def field(label: str, values: Sequence[str]) -> None:
        for i, value in enumerate(values or ["-"]):
            lines.append(f"  {label if i == 0 else '':<13} {value}")

    for node in chain:
        parents = f"  <- {', '.join(node['parents'])}" if node["parents"] else ""
        lines += ["", f"{node['asset']} ({node['group']}){parents}"]
        # The DVC out, relative to the project; the directory itself too when storage lies elsewhere.
        elsewhere = Path(data["project"]) / node["storage"] != Path(node["path"])
        field("storage", [f"{node['storage']}  ({node['path']})" if elsewhere else node["storage"]])
        field("data version", [node["data_version"] or "none (no MANIFEST.json)"])
        field("code version", [node["code_version"] or "-"])
        params = [
            f"{k}: not in params.yaml (defaults)" if k in node["params_absent"] else line
            for k, v in node["params"].items()
            for line in ([k] if k in node["params_absent"] else _leaves(k, v))
        ]
        field("params", params or ["none"])
        last = node["last_materialization"]
        field("materialized", [f"{last['time']}  run {last['run_id']}" if last else "never"])
        field("dvc stage", [_dvc_line(node["dvc"])])
        field("status", [node["status"], *node["reasons"]])
    return "\n".join(lines)
