"""The metadata helpers every asset uses: tables and images the Dagster UI renders."""

from __future__ import annotations

import base64

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from assets._common import image_metadata, table_metadata  # noqa: E402


def test_table_metadata_types_columns_and_keeps_missing_cells():
    rows = [
        {"model": "base_model", "k": 1, "pass_at_k": 0.0, "delta": None},
        {"model": "policy_rho1", "k": 1, "pass_at_k": 0.25, "delta": 0.25},
    ]
    value = table_metadata(rows)
    assert isinstance(value, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("model", "string"), ("k", "int"), ("pass_at_k", "float"), ("delta", "float")
    ]  # fmt: skip
    assert [r.data for r in value.records] == rows  # same fields in every record, as Dagster requires
    assert isinstance(table_metadata([]), dg.MarkdownMetadataValue)


def test_image_metadata_embeds_the_png(tmp_path):
    png = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(png)
    plt.close(fig)
    value = image_metadata(png, "a plot")
    assert isinstance(value, dg.MarkdownMetadataValue)
    encoded = value.md_str.split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(encoded) == png.read_bytes()
    assert str(png) in value.md_str
