"""Where rank 0's log lines and final metadata go: the console, and Dagster when a materialization launched us.

Launched through Dagster Pipes (`PipesSubprocessClient`), the Pipes variables reach every rank; only rank 0
opens the channel. `dagster_pipes` is the protocol's dependency-free side: wmtp_core never imports Dagster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


class Reporter:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._pipes = None
        if enabled and os.environ.get(PIPES_ENV):
            from dagster_pipes import open_dagster_pipes

            self._pipes = open_dagster_pipes()

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, file=sys.stderr, flush=True)
        if self._pipes is not None:
            self._pipes.log.info(message)

    def report(self, metadata: Mapping[str, Any]) -> None:
        """The run's figures: Dagster adds them to the asset's materialization."""
        if self._pipes is not None:
            self._pipes.report_asset_materialization(metadata=dict(metadata))

    def close(self) -> None:
        if self._pipes is not None:
            self._pipes.close()
            self._pipes = None
