"""The Dagster code location of WMTP: Definitions, resources, the dvc.yaml generator and the `wmtp` CLI."""
