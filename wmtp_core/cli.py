"""`wmtp` commands that need no Dagster. `dagster_defs.cli` adds the pipeline commands on top of this group."""

from __future__ import annotations

import os

import click


def _input_errors() -> tuple[type[BaseException], ...]:
    # The library's errors about its inputs (ValueError subclasses, storage and sandbox errors) all name the
    # file, row, key or parameter at fault; a traceback would only bury that.
    from wmtp_core.sandbox.core import SandboxError
    from wmtp_core.storage import StorageError

    return (ValueError, StorageError, SandboxError, FileNotFoundError)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _input_errors() as e:
            if os.environ.get("WMTP_DEBUG"):
                raise
            raise click.ClickException(f"{e}\n(set WMTP_DEBUG=1 for the traceback)") from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wmtp", prog_name="wmtp", message="%(prog)s %(version)s")
def cli() -> None:
    """WMTP: weighted multi-token prediction for code models.

    Errors in inputs are reported in one line naming the file, row or key; WMTP_DEBUG=1 shows the traceback.
    """


def _register() -> None:
    # Each package contributes its commands; imported here so `python -m wmtp_core` sees them all.
    from wmtp_core.data.cli import commands as data_commands
    from wmtp_core.eval.cli import commands as eval_commands
    from wmtp_core.model.cli import commands as model_commands
    from wmtp_core.train.cli import commands as train_commands

    for cmd in [*model_commands, *data_commands, *eval_commands, *train_commands]:
        cli.add_command(cmd)


def main() -> None:
    _register()
    cli()
