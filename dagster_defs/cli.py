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

_QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


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


def _run(defs, selection) -> None:
    """Execute the selected assets (and their checks) in process; fail when a step or a check fails."""
    from dagster import AssetKey

    from dagster_defs.definitions import MAIN_JOB

    job = defs.resolve_job_def(MAIN_JOB)
    keys = [AssetKey(name) for name in selection] if selection is not None else None
    result = job.execute_in_process(
        instance=_instance(), asset_selection=keys, raise_on_error=False, run_config=_QUIET
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
@click.argument("assets", nargs=-1, required=True)
def materialize(assets: tuple[str, ...]) -> None:
    """Materialize ASSETS (and run their checks) through Dagster, recording the run in DAGSTER_HOME."""
    defs = _validated_defs()
    known = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    unknown = [a for a in assets if a not in known]
    if unknown:
        raise click.BadParameter(f"unknown asset(s) {unknown}; known: {sorted(known)}", param_hint="ASSETS")
    _run(defs, list(assets))


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
def demo() -> None:
    """Materialize every asset on the embedded default (demo data, micro models) and say where results are."""
    defs = _validated_defs()
    _run(defs, None)
    storage = Path(defs.resources["storage"].root)
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


PIPELINE_COMMANDS = [materialize, dvc_yaml, status, demo, ui]


def build_cli() -> click.Group:
    """The core group with every package's commands and the pipeline commands added (idempotent)."""
    _register()
    for command in PIPELINE_COMMANDS:
        cli.add_command(command)
    return cli


def main() -> None:
    build_cli()()
