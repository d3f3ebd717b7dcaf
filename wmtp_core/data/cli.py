"""`wmtp` commands of wmtp_core.data."""

from __future__ import annotations

commands: list = []
