"""Software-defined assets of WMTP, one module per asset group.

An asset reads its inputs' files, calls wmtp_core, writes its own directory with `wmtp_core.storage.publish`
and returns metadata. Every module here is loaded by `dagster_defs.definitions`.
"""
