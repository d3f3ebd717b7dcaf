"""The README's main command on a fresh clone, then the pipeline as users inspect and change it.

One module-scoped clone runs `make demo` on the embedded default (every asset through Dagster, recorded in
DVC), and is then shared, in order: its manifests and report, `dvc status`/`dvc repro` with nothing to do, DVC's
metrics and plots, the asset graph in `dagster dev` (GraphQL, and headless Chromium with a screenshot), an edit
marking the same assets in `dvc status` and the Dagster UI, a param change re-running exactly the descendants
through `dvc repro`, an S3 round trip through a local moto server, and a replaced external input.

The clone reuses the installed environments (`.venv`, `.venv-dvc` linked in, their set-up steps marked done with
`make --old-file`) and runs its own code (PYTHONPATH), not the checkout's. No `../shared` beside it: the product
never needs it.
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
import polars as pl
import pytest
import yaml

from dagster_defs.definitions import defs
from dagster_defs.dvcgen import edges, stages
from tests.conftest import free_port
from tests.dagster_ui import running_ui, screenshot_asset_graph
from wmtp_core.storage import sha256_file, verify

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STAGES = stages(defs)
TRAINING = {name for name, stage in STAGES.items() if stage["outs"][0].startswith("storage/training/")}
EVALUATIONS = {name for name in STAGES if name.startswith("eval_")}
MODELS = ["base_model", "policy_baseline", "policy_verifiable", "policy_rho1", "policy_random_matched",
          "policy_shuffled"]  # fmt: skip
SETUP_TARGETS = (".venv/bin/.wmtp-installed", ".venv-dvc/.dvc-installed", ".venv/bin/dvc")


@dataclass
class Clone:
    repo: Path
    env: dict[str, str]
    demo_output: str

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> str:
        out = subprocess.run(args, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out.stdout + out.stderr

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.repo / "storage" / "dagster_home"))

    def latest_materializations(self) -> dict[str, str]:
        """Asset -> run id of its latest materialization in the clone's DAGSTER_HOME event log."""
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

    def dvc_changed(self) -> set[str]:
        return set(json.loads(self.run("dvc", "status", "--json")))

    def dagster_stale(self) -> set[str]:
        return set(json.loads(self.run(str(BIN / "wmtp"), "status", "--json")))


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def clone(tmp_path_factory, repo_root: Path) -> Clone:
    repo = tmp_path_factory.mktemp("fresh") / "wmtp"
    subprocess.run(["git", "clone", "-q", "--no-local", str(repo_root), str(repo)], check=True)
    # Uncommitted work in the checkout is what is under test: bring it over the committed state.
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo_root,
                            capture_output=True, check=True).stdout.decode()  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        src = repo_root / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    for venv in (".venv", ".venv-dvc"):
        (repo / venv).symlink_to(repo_root / venv)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "WMTP_ROOT", "WMTP_STORAGE", "WMTP_PARAMS", "MLFLOW_TRACKING_URI")}  # fmt: skip
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(repo),  # the clone's own code runs, as it would after its own set-up
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(repo.parent / "dvc-site"),
    )
    make = ["make", *(f"--old-file={t}" for t in SETUP_TARGETS), "demo"]
    started = time.monotonic()
    done = subprocess.run(make, cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"make demo exited {done.returncode}:\n{output[-6000:]}"
    print(f"make demo (set-up done) took {time.monotonic() - started:.0f} s")
    return Clone(repo, env, output)


def test_make_demo_builds_every_asset_and_says_where_to_look(clone: Clone):
    storage = clone.repo / "storage"
    for name, stage in STAGES.items():
        assert verify(clone.repo / stage["outs"][0])["files"], name
    assert set(clone.latest_materializations()) == set(STAGES)
    # every asset check ran with its asset, and passed
    check_keys = list(defs.resolve_asset_graph().asset_check_keys)
    with clone.instance() as instance:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    evaluated = {
        key.to_user_string(): record.event.dagster_event.event_specific_data.passed
        for key, record in latest.items()
        if record.event is not None
    }
    assert set(evaluated) == {k.to_user_string() for k in check_keys}
    assert all(evaluated.values()), [k for k, ok in evaluated.items() if not ok]
    # progress, one line per asset, then where the report is and how to open the UI
    assert len(re.findall(r"^\[\d+/\d+\] \w+ materialized", clone.demo_output, re.M)) == len(STAGES)
    assert f"report: {storage / 'evaluation' / 'experiment_report' / 'report.md'}" in clone.demo_output
    assert "wmtp ui" in clone.demo_output


def test_the_report_compares_every_policy_with_the_base_model(clone: Clone):
    out = clone.repo / "storage" / "evaluation" / "experiment_report"
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == MODELS
    assert report["tasks"] == ["humaneval", "mbpp"]
    text = (out / "report.md").read_text()
    for model in MODELS:
        assert f"| {model} |" in text
    for section in ("## pass@k", "## Held-out loss per head", "## Token weights", "## Training runs"):
        assert section in text
    assert {"pass_at_k.png", "training_curves.png", "heldout_loss.png", "token_weights.png"} <= set(report["plots"])
    for png in report["plots"]:
        assert (out / png).stat().st_size > 10_000, png
    metrics = json.loads((out / "metrics.json").read_text())
    for model in MODELS:
        for task in ("humaneval", "mbpp"):
            assert {"pass@1", "pass@2", "pass@4"} <= set(metrics[model][task])
    # the held-out loss of every policy's four heads, and the tuned reference's next-token loss
    heldout = report["heldout_loss"]
    assert set(heldout["policies"]) == set(MODELS[1:])
    assert all(len(heads) == 4 for heads in heldout["policies"].values())
    assert set(heldout["reference"]) == {"reference_tuned"}
    # every evaluated completion was judged in the sandbox: 8 tasks x 4 samples
    samples = pl.read_parquet(clone.repo / "storage/evaluation/eval_policy_rho1_mbpp/samples.parquet")
    assert samples.height == 8 * 4 and samples["status"].is_not_null().all()
    # in the UI: tables and inline images
    with clone.instance() as instance:
        meta = instance.get_latest_materialization_event(dg.AssetKey("experiment_report")).asset_materialization
    assert isinstance(meta.metadata["table/pass_at_k"], dg.TableMetadataValue)
    assert "data:image/png;base64," in meta.metadata["plot/token_weights"].md_str


def test_dvc_records_the_demo_so_repro_has_nothing_to_do(clone: Clone):
    lock = yaml.safe_load((clone.repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert clone.dvc_changed() == set() and clone.dagster_stale() == set()
    before = clone.latest_materializations()
    output = clone.run("dvc", "repro")
    assert ran(output) == set() and "Data and pipelines are up to date" in output
    assert clone.latest_materializations() == before


def test_dvc_metrics_and_plots_show_pass_at_k_and_loss_curves(clone: Clone):
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=clone.repo, env=clone.env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert "failed" not in shown.stderr, shown.stderr
    files = next(iter(json.loads(shown.stdout).values()))["data"]  # {workspace: {data: {file: {data: {...}}}}}
    report = files["storage/evaluation/experiment_report/metrics.json"]["data"]
    for model in MODELS:
        for task in ("humaneval", "mbpp"):
            assert {"pass@1", "pass@2", "pass@4", "mean_completion_tokens"} <= set(report[model][task])
    out = clone.repo.parent / "dvc_plots"
    clone.run("dvc", "plots", "show", "--out", str(out))
    html = (out / "index.html").read_text()
    for png in ("loss_curves.png", "pass_at_k.png", "training_curves.png", "token_weights.png"):
        assert png in html
    assert len(list(out.rglob("*.png"))) >= len(TRAINING) + 4  # every training run's curves, the report's plots


QUERY = """{ assetNodes { assetKey { path } dependencyKeys { path }
  assetMaterializations(limit: 1) { runId timestamp } } }"""


def test_the_ui_serves_the_lineage_and_renders_every_asset(clone: Clone):
    names = sorted(STAGES)
    graph = defs.resolve_asset_graph()
    groups = sorted({graph.get(dg.AssetKey(n)).group_name for n in names})
    shot = clone.repo / "storage" / "evaluation" / "asset_graph.png"  # beside the report's directory
    with running_ui(BIN / "wmtp", clone.repo, clone.env) as ui:
        nodes = ui.graphql(QUERY)["assetNodes"]
        served = {(d["path"][-1], n["assetKey"]["path"][-1]) for n in nodes for d in n["dependencyKeys"]}
        assert served == edges(defs, with_checks=False)
        latest = clone.latest_materializations()
        for node in nodes:
            name = node["assetKey"]["path"][-1]
            assert node["assetMaterializations"], f"{name}: no materialization served"
            assert node["assetMaterializations"][0]["runId"] == latest[name]
        rendered = screenshot_asset_graph(ui, names, groups, shot)
    assert not ui.leftover, f"dagster dev left processes {ui.leftover} after SIGTERM"
    assert rendered == set(names), f"not rendered: {sorted(set(names) - rendered)}"
    assert shot.stat().st_size > 50_000
    keep = os.environ.get("WMTP_SCREENSHOT_DIR")  # for a person to look at after the run
    if keep:
        shutil.copy2(shot, Path(keep) / "asset_graph.png")


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
def test_an_edit_marks_the_same_assets_in_dvc_status_and_the_dagster_ui(clone: Clone, edited, expected):
    assert clone.dvc_changed() == set() and clone.dagster_stale() == set()
    path = clone.repo / edited
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        changed = clone.dvc_changed()
        assert changed == expected
        assert clone.dagster_stale() == changed
    finally:
        path.write_text(original)
    assert clone.dvc_changed() == set() and clone.dagster_stale() == set()


def test_changing_one_param_reruns_that_asset_and_its_descendants_only(clone: Clone):
    target = "policy_rho1"
    descendants = {target}
    while grown := {child for parent, child in edges(defs) if parent in descendants} - descendants:
        descendants |= grown
    assert descendants == {target, "eval_policy_rho1_humaneval", "eval_policy_rho1_mbpp", "experiment_report"}
    before = clone.latest_materializations()
    params_path = clone.repo / "params.yaml"
    text = params_path.read_text()
    changed = re.sub(r"(\n  rho1:\n    ratio: )0\.6\b", r"\g<1>0.5", text, count=1)
    assert yaml.safe_load(changed)["train"]["rho1"]["ratio"] == 0.5
    params_path.write_text(changed)
    output = clone.run("dvc", "repro")
    assert ran(output) == descendants
    after = clone.latest_materializations()
    assert {name for name in STAGES if after[name] != before[name]} == descendants
    selected = json.loads((clone.repo / "storage/training/policy_rho1/result.json").read_text())["final"]
    assert selected["rho1/selected/head1"] == pytest.approx(0.5, abs=0.02)


def test_push_to_s3_wipe_and_pull_restores_identical_files(clone: Clone):
    port = free_port()
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        import boto3

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
        clone.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        clone.run("dvc", "remote", "add", "-d", "s3", "s3://wmtp/dvc")
        clone.run("dvc", "remote", "modify", "s3", "endpointurl", endpoint)
        before = clone.outs()
        assert before
        clone.run("dvc", "push")
        assert s3.list_objects_v2(Bucket="wmtp", Prefix="dvc/")["KeyCount"] > 0
        shutil.rmtree(clone.repo / ".dvc" / "cache")
        for stage in STAGES.values():
            shutil.rmtree(clone.repo / stage["outs"][0])
        assert clone.outs() == {}
        clone.run("dvc", "pull")
        assert clone.outs() == before
        assert ran(clone.run("dvc", "repro")) == set()
    finally:
        moto.terminate()
        moto.wait(timeout=30)


def test_replacing_an_external_input_at_the_same_path_reruns_its_stage(clone: Clone):
    import pyarrow.parquet as pq

    from wmtp_core.data import demo

    external = clone.repo.parent / "code_contests"
    external.mkdir()
    tables = demo.demo_tables()
    for split, table in tables.items():
        pq.write_table(table, external / demo.hub_file_name(split))
    params_path = clone.repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["codecontests_raw"]["path"] = "../code_contests"  # relative to params.yaml
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    clone.run(str(BIN / "wmtp"), "dvc-yaml")
    assert str(external) in yaml.safe_load((clone.repo / "dvc.yaml").read_text())["stages"]["codecontests_raw"]["deps"]
    assert ran(clone.run("dvc", "repro", "-s", "codecontests_raw")) == {"codecontests_raw"}
    assert "codecontests_raw" not in clone.dvc_changed() | clone.dagster_stale()

    train = external / demo.hub_file_name("train")
    pq.write_table(tables["train"].slice(0, tables["train"].num_rows - 1), train)  # same path, other rows
    assert "codecontests_raw" in clone.dvc_changed()
    assert "codecontests_raw" in clone.dagster_stale()
    assert ran(clone.run("dvc", "repro", "-s", "codecontests_raw")) == {"codecontests_raw"}
    assert "codecontests_raw" not in clone.dvc_changed() | clone.dagster_stale()
