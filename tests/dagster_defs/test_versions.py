"""Code deps, external inputs and code versions: what DVC stages and Dagster assets are invalidated by."""

from __future__ import annotations

import dagster as dg

from dagster_defs.definitions import build_definitions, defs
from dagster_defs.versions import (
    REPO,
    ParamsFile,
    code_deps,
    code_version,
    external_inputs,
    function_closure,
    module_closure,
)


def _deps(name: str) -> list[str]:
    return code_deps(defs.resolve_assets_def(dg.AssetKey(name)))


def test_processed_rows_depend_on_the_prompt_template_and_the_source_reader():
    deps = _deps("codecontests_processed")
    # prepare.py imports both: the template fixes every row's tokens, the reader every row's text.
    for path in ("wmtp_core/data/prompts.py", "wmtp_core/data/codecontests.py", "wmtp_core/data/prepare.py"):
        assert path in deps
    assert "wmtp_core/data/prompts.py" in _deps("codecontests_index")  # index.py hashes normalized text


def test_an_asset_does_not_depend_on_code_only_its_module_neighbours_or_checks_run():
    # assets/sources.py also holds the label check, which runs solutions in the sandbox: the tokenizer and the
    # raw rows are computed without it.
    for name in ("tokenizer", "codecontests_raw", "base_model", "codecontests_processed"):
        deps = _deps(name)
        assert not [d for d in deps if d.startswith(("wmtp_core/sandbox", "wmtp_core/eval"))], (name, deps)
    assert "wmtp_core/model/transformer.py" not in _deps("tokenizer")
    # ...while evaluation really runs the sandbox and the model.
    evaluation = _deps("eval_base_model_humaneval")
    assert any(d.startswith("wmtp_core/sandbox") for d in evaluation)
    assert "wmtp_core/model/transformer.py" in evaluation


def test_the_closure_follows_calls_into_helpers_and_imports_inside_functions():
    from wmtp_core.data import prepare

    # prepare_codecontests imports wmtp_core.data.index inside its body.
    assert "wmtp_core/data/index.py" in module_closure(prepare.__name__)

    # An asset's helper in its own module is followed into the library code it calls.
    from assets import models

    assert {"assets/models.py", "wmtp_core/model/micro.py", "wmtp_core/storage.py"} <= function_closure(
        models._write_model
    )


def test_every_declared_and_computed_dep_exists():
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        for dep in code_deps(defs.resolve_assets_def(key)):
            assert (REPO / dep).exists(), f"{key.to_user_string()}: {dep} does not exist"


def test_external_inputs_are_the_paths_params_name_outside_storage(tmp_path):
    (tmp_path / "params.yaml").write_text(
        f"codecontests_raw: {{path: {tmp_path / 'cc'}}}\n"
        "base_model: {source: meta, meta_dir: weights/7B}\n"
        "reference_model: {source: gguf, gguf_file: weights/smollm2.gguf}\n"
        f"mbpp_processed: {{path: {REPO / 'storage' / 'elsewhere.jsonl'}}}\n"
    )
    params = ParamsFile.read(tmp_path / "params.yaml")
    assert external_inputs("codecontests_raw", params) == [str(tmp_path / "cc")]
    assert external_inputs("base_model", params) == [str(tmp_path / "weights/7B")]
    assert external_inputs("reference_model", params) == [str(tmp_path / "weights/smollm2.gguf")]
    assert external_inputs("mbpp_processed", params) == []  # inside storage/: an asset, tracked as such
    assert external_inputs("tokenizer", params) == []
    assert external_inputs(None, params) == []


def test_code_version_changes_with_the_section_the_code_and_external_inputs(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base_model: {seed: 0}\ntokenizer: {vocab_size: 1024}\n")
    params = ParamsFile.read(path)
    deps = ["wmtp_core/model/micro.py"]
    first = code_version(deps, "base_model", [], params)
    assert code_version(deps, "base_model", [], params) == first
    path.write_text("base_model: {seed: 0}\ntokenizer: {vocab_size: 2048}\n")
    params = ParamsFile.read(path)
    assert code_version(deps, "base_model", [], params) == first  # another section
    path.write_text("base_model: {seed: 1}\ntokenizer: {vocab_size: 2048}\n")
    params = ParamsFile.read(path)
    assert code_version(deps, "base_model", [], params) != first
    assert code_version([*deps, "wmtp_core/model/args.py"], "base_model", [], params) != code_version(
        deps, "base_model", [], params
    )
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "consolidated.pth").write_bytes(b"1")
    before = code_version(deps, "base_model", [str(weights)], params)
    (weights / "consolidated.pth").write_bytes(b"22")
    assert code_version(deps, "base_model", [str(weights)], params) != before


def test_every_asset_carries_the_code_version_of_its_deps_and_section(tmp_path):
    graph = defs.resolve_asset_graph()
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert all(versions.values()), versions
    # One evaluation per (model, task) runs the same code on the same section: their inputs tell them apart.
    evaluations = {name for name in versions if name.startswith("eval_")}
    assert len(evaluations) == 12 and len({versions[name] for name in evaluations}) == 1
    assert len(set(versions.values())) == len(versions) - len(evaluations) + 1
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("  seed: 1\n", "  seed: 7\n", 1))
    other = build_definitions(str(tmp_path / "storage"), str(params)).resolve_asset_graph()
    changed = {
        k.to_user_string() for k in other.get_all_asset_keys() if other.get(k).code_version != versions[k.to_user_string()]
    }
    assert changed == {"reference_model"}


def test_each_dvc_stage_depends_on_what_its_code_version_hashes():
    from dagster_defs.dvcgen import stages

    for name, stage in stages(defs).items():
        code = {d for d in stage["deps"] if not d.startswith("storage/")}
        assert code == set(_deps(name)), name
