"""`wmtp` commands of wmtp_core.model."""

from __future__ import annotations

commands: list = []
