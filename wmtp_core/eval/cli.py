"""`wmtp` commands of wmtp_core.eval."""

from __future__ import annotations

commands: list = []
