"""What an asset's result depends on, computed once for both DVC and Dagster.

- **Code deps**: the files of the code the asset really runs. Starting from the asset's own function, every
  function, class or module it references is followed: code in `assets/` function by function (so a helper or
  an asset check in the same module that the asset never calls adds nothing), code in `wmtp_core/` module by
  module through every import it makes (transitively, imports inside functions included). Non-Python inputs
  that code reads (the shipped demo set, the bundled MBPP copy) are declared in the asset's `dvc/deps` metadata.
- **Params section**: the section of params.yaml the asset reads (`dvc/params` metadata, else its own name,
  else its group's).
- **External inputs**: files or directories outside `storage/` that the params section names (CodeContests
  files, Meta weights, an HF directory, a tokenizer), so replacing them at the same path re-runs the asset.

The generated `dvc.yaml` lists code deps and external inputs as stage deps and the section as stage params; the
Dagster definitions carry a `code_version` hashed from the same three, so the UI marks an asset unsynced exactly
when `dvc status` reports its stage changed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import json
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import BaseModel

import assets
from wmtp_core.config import Params, load_params

REPO = Path(assets.__file__).resolve().parents[1]
_OWN_PACKAGES = ("wmtp_core", "assets", "dagster_defs")
_FOLLOWED_BY_FUNCTION = "assets"  # code followed function by function; the rest module by module


def repo_path(path: str | Path) -> str | None:
    """`path` relative to the repository root, or None when it lies outside."""
    p = Path(path).resolve()
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else None


def _own(module_name: str | None) -> bool:
    return bool(module_name) and module_name.split(".")[0] in _OWN_PACKAGES


def _module_of(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None)


# ---- module level: wmtp_core and the other project packages -------------------------------------------------


def _imported_modules(module: types.ModuleType) -> set[str]:
    """Project modules `module`'s source imports anywhere (module level or inside functions)."""
    source = Path(module.__file__).read_text()
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _own(a.name)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if not _own(base):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from pkg import mod` imports the submodule; `from mod import name` the module itself.
                found.add(sub if isinstance(sys.modules.get(sub), types.ModuleType) else base)
    return found


def _reachable(start: Any, next_of: Callable[[Any], Iterable[Any]]) -> list[Any]:
    """Everything reachable from `start` through `next_of`, each visited once (imports and calls have cycles)."""
    seen: dict[Any, None] = {}  # insertion-ordered set
    todo = [start]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen[current] = None
            todo += [n for n in next_of(current) if n not in seen]
    return list(seen)


@functools.cache
def module_closure(name: str) -> frozenset[str]:
    """A project module and every project module it imports, transitively: their files (repo-relative)."""
    names = _reachable(name, lambda m: sorted(_imported_modules(importlib.import_module(m))))
    files = (getattr(importlib.import_module(m), "__file__", None) for m in names)
    return frozenset(rel for f in files if f and (rel := repo_path(f)))


# ---- function level: the asset's own code --------------------------------------------------------------------


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _referenced(fn: types.FunctionType) -> Iterator[Any]:
    """Objects a function's code can reach by name: globals (and module attributes) it names, closure cells."""
    names = {n for code in _code_objects(fn.__code__) for n in code.co_names}
    for name in sorted(names):
        if name in fn.__globals__:
            obj = fn.__globals__[name]
            yield obj
            if isinstance(obj, types.ModuleType):  # `mod.attr`: attribute names sit in co_names too
                yield from (getattr(obj, a) for a in sorted(names) if hasattr(obj, a))
    for cell in fn.__closure__ or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue


def _functions_of(obj: Any) -> Iterator[types.FunctionType]:
    if isinstance(obj, types.FunctionType):
        yield inspect.unwrap(obj)
    elif isinstance(obj, type):
        for base in obj.__mro__:
            if _module_of(base) == obj.__module__:
                for attr in vars(base).values():
                    func = getattr(attr, "__func__", attr)
                    if isinstance(func, types.FunctionType):
                        yield func


def function_closure(fn: types.FunctionType) -> frozenset[str]:
    """Files of the code `fn` runs: see the module docstring."""
    modules: set[str] = set()

    def called(current: types.FunctionType) -> Iterator[types.FunctionType]:
        for obj in _referenced(current):
            module = _module_of(obj)
            if not _own(module):
                continue
            if module.split(".")[0] == _FOLLOWED_BY_FUNCTION and not isinstance(obj, types.ModuleType):
                yield from _functions_of(obj)
            else:
                modules.add(module)

    functions = _reachable(fn, lambda f: list(called(f)))
    files = {rel for f in functions if (rel := repo_path(inspect.getfile(f)))}
    return frozenset(files.union(*(module_closure(m) for m in modules)))


def compute_fn(assets_def: dg.AssetsDefinition) -> types.FunctionType:
    fn = assets_def.op.compute_fn
    return inspect.unwrap(getattr(fn, "decorated_fn", fn))


def code_deps(assets_def: dg.AssetsDefinition) -> list[str]:
    """Repo-relative files of the code that computes the asset, plus the data files it declares (`dvc/deps`)."""
    declared: set[str] = set()
    for spec in assets_def.specs:
        declared |= set(spec.metadata.get("dvc/deps", []))
    return sorted(function_closure(compute_fn(assets_def)) | declared)


# ---- params and external inputs ------------------------------------------------------------------------------


Section = str | list[str] | None  # a section, or dotted keys of several (`train.defaults`, `train.rho1`)


def section_keys(section: Section) -> list[str]:
    """The params.yaml keys a stage depends on, as DVC lists them."""
    if section is None:
        return []
    return [section] if isinstance(section, str) else list(section)


def _lookup(root: Any, key: str) -> Any:
    """A dotted key's value in the raw mapping or the validated model (None when absent)."""
    for part in key.split("."):
        root = root.get(part) if isinstance(root, dict) else getattr(root, part, None)
        if root is None:
            return None
    return root


def params_section(name: str, group: str | None, metadata: dict[str, Any]) -> Section:
    """The params.yaml section an asset reads: `dvc/params` metadata (a section or a list of dotted keys), else
    its own name, else its group's."""
    if "dvc/params" in metadata:
        return metadata["dvc/params"]
    for key in (name, group):
        if key in Params.model_fields:
            return key
    return None


def _paths_in(value: Any) -> Iterator[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _paths_in(getattr(value, field))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths_in(item)


@dataclass(frozen=True)
class ParamsFile:
    """params.yaml read once: its raw sections (what DVC compares) and the validated `Params` (resolved paths)."""

    values: dict[str, Any]
    params: Params

    @classmethod
    def read(cls, path: Path) -> ParamsFile:
        if not path.is_file():  # no file: every section at its defaults, no paths
            return cls({}, Params())
        return cls(yaml.safe_load(path.read_text()) or {}, load_params(path))


def external_inputs(section: Section, params: ParamsFile) -> list[str]:
    """Paths the section names outside `storage/`: relative to the repository when inside it, else absolute."""
    storage = (REPO / "storage").resolve()
    found = {
        repo_path(path) or str(path)
        for key in section_keys(section)
        for path in _paths_in(_lookup(params.params, key))
        if not path.resolve().is_relative_to(storage)
    }
    return sorted(found)


def _files_under(path: Path) -> list[Path]:
    """`path` itself, or every file below it (byte-compiled files aside), in a stable order."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _fingerprint(path: Path) -> list:
    """Cheap identity of an external input (size and mtime of each file): large weights are never hashed here."""
    if not path.exists():
        return [str(path), "missing"]
    stats = [(p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in _files_under(path)]
    return [str(path), stats]


def code_version(deps: list[str], section: Section, external: list[str], params: ParamsFile) -> str:
    """SHA256 (first 16 hex digits) over the code deps' contents, the params section's values and external inputs."""
    digest = hashlib.sha256()
    for dep in deps:
        for f in _files_under(REPO / dep):
            digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    for key in section_keys(section):
        digest.update(json.dumps({key: _lookup(params.values, key)}, sort_keys=True, default=str).encode())
    for ext in external:
        digest.update(json.dumps(_fingerprint(Path(ext) if Path(ext).is_absolute() else REPO / ext)).encode())
    return digest.hexdigest()[:16]


def stale_assets(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Assets the Dagster UI marks unsynced, each with the reasons it gives (as `dvc status` lists changed stages).

    Dagster has no public call for this yet; the UI computes it with the same resolver.
    """
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    found = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        if resolver.get_status(key) == StaleStatus.STALE:
            found[key.to_user_string()] = [
                f"{c.asset_key.to_user_string()} {c.reason}" for c in resolver.get_stale_causes(key)
            ]
    return found
