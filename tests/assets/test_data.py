"""The data assets materialized with Dagster into a temporary storage root, from the bundled demo set."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import data, sources
from dagster_defs.resources import build_resources
from tests.conftest import LLAMA2_SHA256
from wmtp_core.data.index import read_index
from wmtp_core.data.sampling import read_rows
from wmtp_core.storage import verify

DATA_ASSETS = [data.codecontests_processed, data.codecontests_index, data.mbpp_processed, data.humaneval_processed]
DATA_CHECKS = [data.codecontests_processed_valid, data.codecontests_index_matches, data.no_eval_prompt_in_training_data]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, shared_data, llama2_tokenizer) -> tuple[Path, dg.ExecuteInProcessResult]:
    base = tmp_path_factory.mktemp("data_assets")
    root = base / "project"
    root.mkdir()
    (base / "shared").symlink_to(shared_data.parent)  # params.yaml's relative paths resolve as in the repository
    (root / "params.yaml").write_text(f"tokenizer:\n  path: {llama2_tokenizer}\n  sha256: {LLAMA2_SHA256}\n")
    result = dg.materialize(
        [sources.codecontests_raw, sources.tokenizer, *DATA_ASSETS, *DATA_CHECKS],
        resources=build_resources(root / "storage", root / "params.yaml"),
        raise_on_error=False,
    )
    return root / "storage", result


def test_assets_materialize_with_metadata(materialized):
    storage, result = materialized
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    processed = storage / "data" / "codecontests_processed"
    verify(processed)
    assert sorted(p.name for p in processed.iterdir()) == [
        "MANIFEST.json", "n_tokens_hist.png", "schema.json", "stats.json", "test.parquet", "train.parquet",
        "valid.parquet",
    ]  # fmt: skip
    meta = result.asset_materializations_for_node("codecontests_processed")[0].metadata
    assert "data:image/png;base64," in meta["preview"].value and meta["rows"].value > 0
    assert meta["tokenizer_sha256"].value == LLAMA2_SHA256
    rows = sum(pq.ParquetFile(processed / f"{s}.parquet").metadata.num_rows for s in ("train", "valid", "test"))
    assert meta["rows"].value == rows
    for name, expected in (("mbpp_processed", 974), ("humaneval_processed", 164)):
        assert result.asset_materializations_for_node(name)[0].metadata["count/rows"].value == expected


def test_checks_pass_including_decontamination(materialized):
    _, result = materialized
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {c.check_key.name for c in DATA_CHECKS}
    assert all(e.passed for e in evaluations.values()), {n: e.metadata for n, e in evaluations.items()}
    assert evaluations["no_eval_prompt_in_training_data"].metadata["eval_prompts"].value == 974 + 164


def test_index_drives_read_rows(materialized):
    storage, _ = materialized
    index = read_index(storage / "data" / "codecontests_index" / "index.parquet", split="train")
    picked = index["row_id"].to_pylist()[::2]
    rows = read_rows([storage / "data" / "codecontests_processed" / "train.parquet"], picked)
    assert rows["row_id"].to_pylist() == picked
    assert rows["n_tokens"].to_pylist() == index["n_tokens"].to_pylist()[::2]


def test_a_leaked_prompt_is_found_through_case_and_spacing(materialized, tmp_path):
    storage, _ = materialized
    mbpp = pq.read_table(storage / "data" / "mbpp_processed" / "mbpp.parquet")
    leaked = mbpp["text"][42].as_py()
    from wmtp_core.data.index import find_contamination

    train = pq.read_table(storage / "data" / "codecontests_processed" / "train.parquet")
    instructions = train["instruction"].to_pylist()
    instructions[0] = "  " + leaked.upper().replace(" ", "\n") + "\n"  # normalization sees through case and spacing
    pq.write_table(train.set_column(train.schema.get_field_index("instruction"), "instruction",
                                    [instructions]), tmp_path / "train.parquet")  # fmt: skip
    prompts = [(f"mbpp/{r['task_id']}", r["text"]) for r in mbpp.to_pylist()]
    assert find_contamination(prompts, [tmp_path / "train.parquet"]) == [f"mbpp/{mbpp['task_id'][42].as_py()}"]


def test_readme_training_rows_example_runs(materialized, monkeypatch):
    storage, _ = materialized
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Training rows in Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(storage.parent)  # the example's relative paths: params.yaml and storage/ of a project
    scope: dict = {}
    exec(compile(code, "README.md (Training rows in Python)", "exec"), scope)
    assert len(scope["ids"]) == scope["rows"].num_rows == 8
    assert scope["rows"]["row_id"].to_pylist() == scope["ids"].tolist()
    assert scope["batch"]["input_ids"].shape[0] == 4 and scope["batch"]["reward"].shape == (4,)
