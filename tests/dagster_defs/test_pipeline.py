"""The whole pipeline through DVC and Dagster, in a temporary copy of the repository.

One module-scoped copy is reproduced once and then shared, in order: no-op repro, a param change, the lineage
served by `dagster dev`, and an S3 round trip through a local moto server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dagster_defs.definitions import defs
from dagster_defs.dvcgen import edges, stages
from tests.conftest import free_port
from tests.dagster_ui import running_ui
from wmtp_core.storage import sha256_file, verify

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = stages(defs)
TRAINING = {name for name, stage in STAGES.items() if stage["outs"][0].startswith("storage/training/")}
EVALUATIONS = {name for name in STAGES if name.startswith("eval_")}


@dataclass
class Pipeline:
    repo: Path
    env: dict[str, str]
    first_output: str

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> str:
        out = subprocess.run(
            args, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out.stdout + out.stderr

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.repo / "storage" / "dagster_home"))

    def latest_materializations(self) -> dict[str, str]:
        """Asset -> run id of its latest materialization in the copy's DAGSTER_HOME event log."""
        with self.instance() as instance:
            found = {}
            for name in STAGES:
                event = instance.get_latest_materialization_event(dg.AssetKey(name))
                if event is not None:
                    found[name] = event.run_id
            return found

    def outs(self) -> dict[str, str]:
        return {
            p.relative_to(self.repo).as_posix(): sha256_file(p)
            for stage in STAGES.values()
            for p in sorted((self.repo / stage["outs"][0]).rglob("*"))
            if p.is_file()
        }


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))



@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, repo_root: Path) -> Pipeline:
    base = tmp_path_factory.mktemp("pipeline")
    repo = base / "main"
    # Beside the copy, as beside the checkout: params such as ../shared/data/... resolve the same way.
    (base / "shared").symlink_to(repo_root.parent / "shared")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = repo_root / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "WMTP_ROOT", "WMTP_STORAGE")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # The copy's own code runs its stages, as it would in a fresh clone.
        PYTHONPATH=str(repo),
        DVC_SITE_CACHE_DIR=str(base / "dvc-site"),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="wmtp-test",
        GIT_AUTHOR_EMAIL="wmtp-test@localhost",
        GIT_COMMITTER_NAME="wmtp-test",
        GIT_COMMITTER_EMAIL="wmtp-test@localhost",
    )
    # The pipeline's mechanics do not depend on how many completions are sampled or how many steps train: a
    # smaller evaluation and two training steps (the embedded default, which `make demo` runs, does more) keep
    # this test short.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluation"].update(
        n_samples=2, k=[1, 2], limit=2, max_new_tokens=16, speculative_prompts=1, speculative_max_new_tokens=8
    )
    params["train"]["defaults"].update(max_steps=2, epochs=None, eval_every=2, checkpoint_every=2, eval_rows=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = Pipeline(repo, env, "")
    p.run("git", "init", "-q")
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "copy")
    p.first_output = p.run("dvc", "repro")
    return p


def test_repro_materializes_the_graph_and_records_lineage(pipeline: Pipeline):
    assert ran(pipeline.first_output) == set(STAGES)
    lock = yaml.safe_load((pipeline.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    for stage in STAGES.values():
        verify(pipeline.repo / stage["outs"][0])
    home = pipeline.repo / "storage" / "dagster_home"
    assert yaml.safe_load((home / "dagster.yaml").read_text()) == {"telemetry": {"enabled": False}}
    # Every DVC stage ran through Dagster: its materialization is in the event log of the copy's DAGSTER_HOME,
    # and so is every asset check, run by the stage of its asset.
    assert set(pipeline.latest_materializations()) == set(STAGES)
    check_keys = list(defs.resolve_asset_graph().asset_check_keys)
    with pipeline.instance() as instance:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    evaluated = {
        key.to_user_string(): record.event.dagster_event.event_specific_data.passed
        for key, record in latest.items()
        if record.event is not None
    }
    assert set(evaluated) == {k.to_user_string() for k in check_keys}
    assert all(evaluated.values()), [k for k, ok in evaluated.items() if not ok]


def test_second_repro_does_nothing(pipeline: Pipeline):
    before = pipeline.latest_materializations()
    output = pipeline.run("dvc", "repro")
    assert ran(output) == set()
    assert "Data and pipelines are up to date" in output
    assert pipeline.latest_materializations() == before


def test_changing_one_param_reruns_that_asset_and_its_descendants_only(pipeline: Pipeline):
    target = "reference_model"
    descendants = {target}
    while grown := {child for parent, child in edges(defs) if parent in descendants} - descendants:
        descendants |= grown
    before = pipeline.latest_materializations()
    params_path = pipeline.repo / "params.yaml"
    text = params_path.read_text()
    seed = yaml.safe_load(text)[target]["seed"]
    changed = re.sub(rf"(\n{target}:\n(?:  .*\n)*?  seed: ){seed}\b", rf"\g<1>{seed + 1}", text, count=1)
    assert yaml.safe_load(changed)[target]["seed"] == seed + 1
    params_path.write_text(changed)
    output = pipeline.run("dvc", "repro")
    assert ran(output) == descendants
    after = pipeline.latest_materializations()
    assert {name for name in STAGES if after[name] != before[name]} == descendants


QUERY = """{ assetNodes { assetKey { path } dependencyKeys { path }
  assetMaterializations(limit: 1) { runId timestamp } } }"""


def test_dagster_dev_serves_edges_and_latest_materializations(pipeline: Pipeline):
    with running_ui(BIN / "wmtp", pipeline.repo, pipeline.env) as ui:
        nodes = ui.graphql(QUERY)["assetNodes"]
        served = {
            (tuple(d["path"])[-1], tuple(n["assetKey"]["path"])[-1])
            for n in nodes
            for d in n["dependencyKeys"]
        }
        assert served == edges(defs, with_checks=False)
        with pipeline.instance() as instance:
            for node in nodes:
                name = node["assetKey"]["path"][-1]
                latest = instance.get_latest_materialization_event(dg.AssetKey(name))
                assert node["assetMaterializations"], f"{name}: no materialization served"
                assert node["assetMaterializations"][0]["runId"] == latest.run_id
    assert not ui.leftover, f"dagster dev left processes {ui.leftover} after SIGTERM"


def test_push_to_s3_wipe_and_pull_restores_identical_files(pipeline: Pipeline):
    port = free_port()
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        creds = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_bucket(Bucket="wmtp")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        pipeline.env.update(creds)
        pipeline.run("dvc", "remote", "add", "-d", "s3", "s3://wmtp/dvc")
        pipeline.run("dvc", "remote", "modify", "s3", "endpointurl", endpoint)
        before = pipeline.outs()
        assert before
        pipeline.run("dvc", "push")
        assert s3.list_objects_v2(Bucket="wmtp", Prefix="dvc/")["KeyCount"] > 0
        shutil.rmtree(pipeline.repo / ".dvc" / "cache")
        for stage in STAGES.values():
            shutil.rmtree(pipeline.repo / stage["outs"][0])
        assert pipeline.outs() == {}
        pipeline.run("dvc", "pull")
        assert pipeline.outs() == before
        assert ran(pipeline.run("dvc", "repro")) == set()
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def _dvc_changed(pipeline: Pipeline) -> set[str]:
    out = subprocess.run(["dvc", "status", "--json"], cwd=pipeline.repo, env=pipeline.env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return set(json.loads(out.stdout))


def _dagster_stale(pipeline: Pipeline) -> set[str]:
    out = subprocess.run([str(BIN / "wmtp"), "status", "--json"], cwd=pipeline.repo, env=pipeline.env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        # The template fixes every row's tokens: the rows, their index and every training run (the collator builds
        # its batches with it), nothing upstream.
        ("wmtp_core/data/prompts.py", {"codecontests_processed", "codecontests_index", *TRAINING}),
        # The weighting runs in torchrun's workers: exactly the training stages.
        ("wmtp_core/weighting.py", TRAINING),
        # Only evaluation runs programs: the tokenizer and everything else stays.
        ("wmtp_core/sandbox/server.py", EVALUATIONS),
    ],
)
def test_an_edit_marks_the_same_assets_in_dvc_status_and_the_dagster_ui(pipeline: Pipeline, edited, expected):
    assert _dvc_changed(pipeline) == set() and _dagster_stale(pipeline) == set()
    path = pipeline.repo / edited
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        changed = _dvc_changed(pipeline)
        assert changed == expected
        assert _dagster_stale(pipeline) == changed
    finally:
        path.write_text(original)
    assert _dvc_changed(pipeline) == set() and _dagster_stale(pipeline) == set()


def test_replacing_an_external_input_at_the_same_path_reruns_its_stage(pipeline: Pipeline):
    import pyarrow.parquet as pq

    from wmtp_core.data import demo

    external = pipeline.repo.parent / "code_contests"
    external.mkdir()
    tables = demo.demo_tables()
    for split, table in tables.items():
        pq.write_table(table, external / demo.hub_file_name(split))
    params_path = pipeline.repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["codecontests_raw"]["path"] = "../code_contests"  # relative to params.yaml
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline.run("wmtp", "dvc-yaml")
    assert str(external) in yaml.safe_load((pipeline.repo / "dvc.yaml").read_text())["stages"]["codecontests_raw"]["deps"]
    assert ran(pipeline.run("dvc", "repro", "-s", "codecontests_raw")) == {"codecontests_raw"}
    assert "codecontests_raw" not in _dvc_changed(pipeline) | _dagster_stale(pipeline)

    train = external / demo.hub_file_name("train")
    pq.write_table(tables["train"].slice(0, tables["train"].num_rows - 1), train)  # same path, other rows
    assert "codecontests_raw" in _dvc_changed(pipeline)
    assert "codecontests_raw" in _dagster_stale(pipeline)
    assert ran(pipeline.run("dvc", "repro", "-s", "codecontests_raw")) == {"codecontests_raw"}
    assert "codecontests_raw" not in _dvc_changed(pipeline) | _dagster_stale(pipeline)
