"""`wmtp lineage` and `wmtp materialize SELECTION`: lineage read back from a temporary DAGSTER_HOME and storage.

One module-scoped project (params.yaml, storage/, DAGSTER_HOME, a copy of dvc.yaml) gets `+tokenizer`
materialized once through `wmtp materialize`; every test then reads it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

import dagster_defs.definitions
from dagster_defs.cli import build_cli
from dagster_defs.definitions import build_definitions
from dagster_defs.lineage import SelectionError, asset_lineage, format_lineage, select
from wmtp_core.storage import MANIFEST, sha256_file


@dataclass
class Project:
    root: Path
    defs: dg.Definitions
    materialize_output: str

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.root / "dagster_home"))

    def lineage(self, name: str, defs: dg.Definitions | None = None) -> dict:
        with self.instance() as instance:
            return asset_lineage(defs or self.defs, instance, name, project=self.root)


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root: Path) -> Project:
    root = tmp_path_factory.mktemp("lineage")
    shutil.copy(repo_root / "params.yaml", root / "params.yaml")
    shutil.copy(repo_root / "dvc.yaml", root / "dvc.yaml")  # only its stage names are read
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = build_definitions(str(root / "storage"), str(root / "params.yaml"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("WMTP_ROOT", str(root))
        mp.setattr(dagster_defs.definitions, "defs", defs)  # what the CLI's commands load
        out = CliRunner().invoke(build_cli(), ["materialize", "+tokenizer"])
    assert out.exit_code == 0, out.output
    yield Project(root, defs, out.output)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cli_env(project: Project, monkeypatch) -> CliRunner:
    monkeypatch.setenv("DAGSTER_HOME", str(project.root / "dagster_home"))
    monkeypatch.setenv("WMTP_ROOT", str(project.root))
    monkeypatch.setattr(dagster_defs.definitions, "defs", project.defs)
    return CliRunner()


def _names(keys) -> list[str]:
    return [k.to_user_string() for k in keys]


# ---- selection -----------------------------------------------------------------------------------------------


def test_selection_syntax_resolves_against_the_asset_graph(project: Project):
    graph = project.defs.resolve_asset_graph()
    assert _names(select(graph, ["+tokenizer"])) == ["codecontests_raw", "tokenizer"]
    assert _names(select(graph, ["*tokenizer"])) == ["codecontests_raw", "tokenizer"]
    children = {k.to_user_string() for k in graph.get(dg.AssetKey("tokenizer")).child_keys}
    assert {"base_model", "codecontests_processed"} <= children
    assert set(_names(select(graph, ["tokenizer+"]))) == {"tokenizer"} | children
    two_levels = set(_names(select(graph, ["tokenizer++"])))
    assert "codecontests_index" in two_levels - children  # a child of codecontests_processed
    assert set(_names(select(graph, ["tokenizer*"]))) >= two_levels
    training = {
        k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).group_name == "training"
    }
    assert set(_names(select(graph, ["group:training"]))) == training
    # Several expressions are a union, in run order (every asset after its parents).
    union = _names(select(graph, ["base_model", "+tokenizer", "key:mbpp_*"]))
    assert union == ["codecontests_raw", "mbpp_processed", "tokenizer", "base_model"]
    # Dagster's current syntax: + without a depth is every level.
    assert set(_names(select(graph, ["+key:policy_rho1"]))) == set(_names(select(graph, ["*policy_rho1"])))


@pytest.mark.parametrize(
    ("expressions", "message"),
    [
        (["tokenizer", "+no_such_asset"], "unknown asset(s) ['no_such_asset']; known: ["),
        (["group:no_such_group"], "'group:no_such_group' selects no asset (groups: ["),
        (["key:tokenizer and"], "'key:tokenizer and' is not an asset selection"),
    ],
)
def test_a_bad_selection_names_the_expression_at_fault(project: Project, expressions, message):
    with pytest.raises(SelectionError) as e:
        select(project.defs.resolve_asset_graph(), expressions)
    assert message in str(e.value)


def test_materialize_dry_run_lists_the_selection_in_order_and_runs_nothing(project: Project, cli_env):
    with project.instance() as instance:
        runs = len(instance.get_runs())
    out = cli_env.invoke(build_cli(), ["materialize", "--dry-run", "tokenizer+", "+tokenizer"])
    assert out.exit_code == 0, out.output
    listed = [line.strip() for line in out.output.splitlines()[1:]]
    assert listed[:2] == ["codecontests_raw", "tokenizer"] and "base_model" in listed
    with project.instance() as instance:
        assert len(instance.get_runs()) == runs
    out = cli_env.invoke(build_cli(), ["materialize", "--dry-run", "+no_such_asset"])
    assert (
        out.exit_code == 2 and "Invalid value for SELECTION: unknown asset(s) ['no_such_asset']" in out.output
    )


# ---- lineage -------------------------------------------------------------------------------------------------


def test_lineage_of_a_materialized_asset_matches_storage_and_the_event_log(project: Project):
    assert "succeeded" in project.materialize_output
    found = project.lineage("tokenizer")
    assert [n["asset"] for n in found["chain"]] == ["codecontests_raw", "tokenizer"]
    graph = project.defs.resolve_asset_graph()
    with project.instance() as instance:
        for node in found["chain"]:
            key = dg.AssetKey(node["asset"])
            directory = project.root / "storage" / node["group"] / node["asset"]
            assert node["storage"] == f"storage/sources/{node['asset']}" and node["path"] == str(directory)
            assert node["data_version"] == sha256_file(directory / MANIFEST)
            assert node["code_version"] == graph.get(key).code_version
            latest = instance.get_latest_materialization_event(key)
            assert node["last_materialization"]["run_id"] == latest.run_id
            assert node["last_materialization"]["data_version"] == node["data_version"]
            assert (node["status"], node["stale"], node["reasons"]) == ("up to date", False, [])
            # dvc.yaml has the stage; this project was never run by DVC.
            assert node["dvc"]["in_dvc_yaml"] and not node["dvc"]["in_dvc_lock"]
    raw, tokenizer = found["chain"]
    assert raw["parents"] == [] and tokenizer["parents"] == ["codecontests_raw"]
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    assert tokenizer["params"] == {"tokenizer": params["tokenizer"]} and tokenizer["params_absent"] == []


def test_lineage_command_prints_aligned_text_or_json(project: Project, cli_env):
    out = cli_env.invoke(build_cli(), ["lineage", "tokenizer", "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    assert found == project.lineage("tokenizer")
    out = cli_env.invoke(build_cli(), ["lineage", "tokenizer"])
    assert out.exit_code == 0 and out.output.strip() == format_lineage(found)
    text = out.output
    tokenizer = found["chain"][1]
    assert "tokenizer (sources)  <- codecontests_raw" in text
    assert f"  data version  {tokenizer['data_version']}\n" in text
    assert f"  code version  {tokenizer['code_version']}\n" in text
    assert "  params        tokenizer.path = null\n                tokenizer.sha256 = null\n" in text
    run_id = tokenizer["last_materialization"]["run_id"]
    assert f"  materialized  {tokenizer['last_materialization']['time']}  run {run_id}\n" in text
    assert "  dvc stage     tokenizer; dvc.lock: not recorded" in text
    assert text.rstrip().endswith("  status        up to date")

    out = cli_env.invoke(build_cli(), ["lineage", "no_such_asset"])
    assert out.exit_code == 2
    assert "unknown asset 'no_such_asset'; known: [" in out.output and "'tokenizer'" in out.output


def test_a_params_edit_makes_the_asset_stale_and_leaves_its_input_alone(project: Project):
    edited = project.root / "edited.yaml"
    text = (project.root / "params.yaml").read_text()
    edited.write_text(text.replace("  vocab_size: 1024", "  vocab_size: 512", 1))
    assert yaml.safe_load(edited.read_text())["tokenizer"]["vocab_size"] == 512
    defs = build_definitions(str(project.root / "storage"), str(edited))
    raw, tokenizer = project.lineage("tokenizer", defs)["chain"]
    assert raw["status"] == "up to date"
    assert tokenizer["params"]["tokenizer"]["vocab_size"] == 512
    assert (tokenizer["status"], tokenizer["stale"]) == ("stale", True)
    assert tokenizer["reasons"] == ["tokenizer has a new code version"]


def test_a_never_materialized_asset_shows_as_such(project: Project):
    found = project.lineage("base_model")
    assert [n["asset"] for n in found["chain"]] == ["codecontests_raw", "tokenizer", "base_model"]
    base = found["chain"][-1]
    assert (base["status"], base["stale"], base["last_materialization"], base["data_version"]) == (
        "never materialized",
        True,
        None,
        None,
    )
    text = format_lineage(found)
    block = text[text.index("base_model (models)") :]
    assert "  materialized  never\n" in block and block.rstrip().endswith("status        never materialized")


def test_dvc_lock_record_is_compared_with_storage_and_params(project: Project, tmp_path: Path):
    shutil.copy(project.root / "dvc.yaml", tmp_path / "dvc.yaml")
    directory = project.root / "storage" / "sources" / "tokenizer"
    files = [p for p in directory.rglob("*") if p.is_file()]
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    out = {"path": "storage/sources/tokenizer", "md5": "0.dir", "size": sum(p.stat().st_size for p in files)}
    stage = {
        "cmd": "wmtp materialize tokenizer",
        "params": {"params.yaml": {"tokenizer": params["tokenizer"]}},
    }
    (tmp_path / "storage").symlink_to(project.root / "storage")

    def lock(**changes) -> dict:
        (tmp_path / "dvc.lock").write_text(
            yaml.safe_dump({"schema": "2.0", "stages": {"tokenizer": {**stage, **changes}}})
        )
        with project.instance() as instance:
            return asset_lineage(project.defs, instance, "tokenizer", project=tmp_path)["chain"][-1]["dvc"]

    found = lock(outs=[{**out, "nfiles": len(files)}])
    assert found == {
        "stage": "tokenizer",
        "in_dvc_yaml": True,
        "in_dvc_lock": True,
        "outs_match_lock": True,
        "params_match_lock": True,
    }
    assert not lock(outs=[{**out, "nfiles": len(files) + 1}])["outs_match_lock"]
    changed = {"params.yaml": {"tokenizer": {**params["tokenizer"], "vocab_size": 7}}}
    assert not lock(outs=[{**out, "nfiles": len(files)}], params=changed)["params_match_lock"]
