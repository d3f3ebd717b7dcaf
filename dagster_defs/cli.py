"""The `wmtp` console script: wmtp_core's commands plus the pipeline commands that need Dagster.

`materialize` runs through Dagster in the persistent DAGSTER_HOME, so DVC stages, `wmtp demo` and the UI all
write to one event log and the lineage of every run is inspectable.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from wmtp_core.cli import _register, cli
from wmtp_core.config import ConfigError, load_params


def _instance():
    from dagster import DagsterInstance

    from dagster_defs.resources import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home())
    return DagsterInstance.get()


def _validated_defs():
    """Definitions, after params.yaml validates: a bad key stops here, before any run or write."""
    try:
        # Building the definitions reads params.yaml too (code versions hash each asset's section).
        from dagster_defs.definitions import defs

        load_params(defs.resources["params"].path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    return defs


def _run(defs, selection, *, log_level: str = "INFO") -> None:
    """Execute the selected assets (and their checks) in process; fail when a step or a check fails. A line per
    materialized asset shows the progress."""
    from dagster import AssetKey

    from dagster_defs.definitions import MAIN_JOB
    from dagster_defs.demo import expect

    job = defs.resolve_job_def(MAIN_JOB)
    keys = [AssetKey(name) for name in selection] if selection is not None else None
    expect([k.to_user_string() for k in (keys or defs.resolve_asset_graph().get_all_asset_keys())])
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    result = job.execute_in_process(
        instance=_instance(), asset_selection=keys, raise_on_error=False, run_config=run_config
    )
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    for e in failed_checks:
        click.echo(
            f"check failed: {e.asset_key.to_user_string()}:{e.check_name} {dict(e.metadata)}", err=True
        )
    if not result.success:
        raise click.ClickException(f"run {result.run_id} failed; see `wmtp ui` or the log above")
    if failed_checks:
        raise click.ClickException(f"run {result.run_id}: {len(failed_checks)} asset check(s) failed")
    click.echo(f"run {result.run_id} succeeded (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")


@click.command()
@click.argument("selection", nargs=-1, required=True)
@click.option("--dry-run", is_flag=True, help="list the selected assets in run order; run nothing")
def materialize(selection: tuple[str, ...], dry_run: bool) -> None:
    """Materialize the assets SELECTION names (and run their checks) through Dagster, recording the run in
    DAGSTER_HOME.

    SELECTION is one or more expressions of Dagster's asset selection syntax, read as `define_asset_job` and
    the UI read them; several select their union. Quote those holding * or spaces for the shell.

    \b
      tokenizer                         one asset
      +tokenizer, tokenizer+            it and its parents / its children: each + one more level
      '*policy_rho1', 'tokenizer*'      it and all its ancestors / all its descendants
      group:training                    every asset of a group
      +key:policy_rho1                  Dagster's current syntax: + is every level (1+key:... one)
      'key:critic+ and group:training'  and, or, not; wildcards as in key:policy_*

    \b
    Examples:
      wmtp materialize codecontests_raw tokenizer
      wmtp materialize --dry-run '*policy_rho1'
    """
    from dagster_defs.lineage import SelectionError, select

    defs = _validated_defs()
    try:
        keys = select(defs.resolve_asset_graph(), selection)
    except SelectionError as e:
        raise click.BadParameter(str(e), param_hint="SELECTION") from e
    names = [k.to_user_string() for k in keys]
    if dry_run:
        click.echo(f"{len(names)} asset(s) selected, in run order (their checks run with them):")
        for name in names:
            click.echo(f"  {name}")
        return
    _run(defs, names)


@click.command()
@click.argument("asset")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text")
def lineage(asset: str, as_json: bool) -> None:
    """Show ASSET and its ancestors, upstream first, without the UI.

    For each: its storage path, data version (SHA256 of its MANIFEST.json), code version, params section as
    params.yaml says now, last materialization (time, run id) in DAGSTER_HOME, its DVC stage and dvc.lock record,
    and whether it is stale (code, params or an input changed since) or never materialized.
    """
    from dagster_defs.lineage import SelectionError, asset_lineage, format_lineage

    defs = _validated_defs()
    try:
        with _instance() as instance:
            found = asset_lineage(defs, instance, asset)
    except SelectionError as e:
        raise click.BadParameter(str(e), param_hint="ASSET") from e
    click.echo(json.dumps(found, indent=2) if as_json else format_lineage(found))


@click.command("dvc-yaml")
@click.option("--check", is_flag=True, help="exit 1 if the committed dvc.yaml differs from the generated one")
@click.option(
    "--file", "path", type=click.Path(dir_okay=False, path_type=Path), help="default: the repo's dvc.yaml"
)
def dvc_yaml(check: bool, path: Path | None) -> None:
    """Write dvc.yaml (one stage per asset) generated from the Dagster asset graph."""
    from dagster_defs.definitions import defs
    from dagster_defs.dvcgen import REPO, render

    text = render(defs)
    path = path or REPO / "dvc.yaml"
    if check:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            raise click.ClickException(f"{path} is stale: run `wmtp dvc-yaml` and commit it")
        click.echo(f"{path} is up to date")
        return
    path.write_text(text)
    click.echo(f"wrote {path}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: asset -> reasons")
def status(as_json: bool) -> None:
    """List the assets Dagster marks unsynced (code, params or an input changed since they were materialized).

    The same assets `dvc status` reports changed: both hash the same code deps, params section and external
    inputs (see `dagster_defs.versions`).
    """
    from dagster_defs.versions import stale_assets

    defs = _validated_defs()
    with _instance() as instance:
        found = stale_assets(defs, instance)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for name, reasons in found.items():
        click.echo(f"{name}:")
        for reason in reasons:
            click.echo(f"\t{reason}")
    if not found:
        click.echo("every materialized asset is up to date")


@click.command()
@click.option("--verbose", is_flag=True, help="Dagster's INFO log of every step (default: warnings, progress)")
def demo(verbose: bool) -> None:
    """Materialize every asset on the embedded default (demo data, micro models), or on the preset WMTP_PARAMS
    names, record the result in DVC's dvc.lock when dvc.yaml is generated from those params (so `dvc repro` has
    nothing left to do), and say where the results are."""
    from dagster_defs.demo import record_in_dvc
    from dagster_defs.dvcgen import render
    from dagster_defs.resources import project_root

    defs = _validated_defs()
    _run(defs, None, log_level="INFO" if verbose else "WARNING")
    storage = Path(defs.resources["storage"].root)
    dvc_file = project_root() / "dvc.yaml"
    if dvc_file.is_file() and dvc_file.read_text() != render(defs):
        # dvc.yaml describes another params file (a preset chosen with WMTP_PARAMS): a dvc.lock written from it
        # would record these outputs against params they were not made with.
        click.echo(f"{dvc_file} is not generated from {defs.resources['params'].path}: no dvc.lock written "
                   "(`wmtp dvc-yaml` regenerates it for these params)")  # fmt: skip
    else:
        click.echo(record_in_dvc(project_root(), storage))
    click.echo(f"\nresults under {storage}:")
    graph = defs.resolve_asset_graph()
    for key in sorted(
        graph.get_all_asset_keys(), key=lambda k: (graph.get(k).group_name, k.to_user_string())
    ):
        name = key.to_user_string()
        click.echo(f"  {graph.get(key).group_name}/{name}")
    reports = sorted(storage.glob("evaluation/experiment_report/*.md"))
    for report in reports:
        click.echo(f"\nreport: {report}")
    click.echo("\nlineage and metadata: `wmtp ui`, then open http://127.0.0.1:3000")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=int)
def ui(host: str, port: int) -> None:
    """Start `dagster dev` (web UI + daemon) on the persistent DAGSTER_HOME."""
    from dagster_defs.resources import dagster_home

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home())}
    # dagster dev copies SIGINT's disposition onto SIGTERM; started with SIGINT ignored it would ignore both.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    exe = Path(sys.executable).with_name("dagster")
    args = [str(exe), "dev", "-m", "dagster_defs.definitions", "-h", host, "-p", str(port)]
    click.echo(f"DAGSTER_HOME={env['DAGSTER_HOME']}; UI at http://{host}:{port}")
    os.execve(args[0], args, env)


PIPELINE_COMMANDS = [materialize, lineage, dvc_yaml, status, demo, ui]


def build_cli() -> click.Group:
    """The core group with every package's commands and the pipeline commands added (idempotent)."""
    _register()
    for command in PIPELINE_COMMANDS:
        cli.add_command(command)
    return cli


def main() -> None:
    build_cli()()
