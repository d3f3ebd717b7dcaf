"""`wmtp` commands that need no Dagster. `dagster_defs.cli` adds the pipeline commands on top of this group."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """WMTP: weighted multi-token prediction for code models."""


def _register() -> None:
    # Each package contributes its commands; imported here so `python -m wmtp_core` sees them all.
    from wmtp_core.data.cli import commands as data_commands
    from wmtp_core.eval.cli import commands as eval_commands
    from wmtp_core.model.cli import commands as model_commands

    for cmd in [*model_commands, *data_commands, *eval_commands]:
        cli.add_command(cmd)


def main() -> None:
    _register()
    cli()
