"""End to end: a saved micro model on the first HumanEval tasks (explicit limit), then the report over it."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from wmtp_core.eval.evaluate import evaluate, evaluate_command
from wmtp_core.eval.params import EvaluationParams
from wmtp_core.eval.report import write_report
from wmtp_core.eval.timing import REPEATS, WARMUP
from wmtp_core.model import make_micro, save
from wmtp_core.storage import verify
from wmtp_core.tokenizer import Tokenizer

PARAMS = EvaluationParams(
    n_samples=2,
    k=[1, 2],
    temperature=0.8,
    top_p=0.95,
    max_new_tokens=12,
    batch_size=2,
    limit=2,
    workers=2,
    timeout=10.0,
    speculative_prompts=1,
    speculative_max_new_tokens=8,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama2_tokenizer):
    tok = Tokenizer(llama2_tokenizer)
    out = tmp_path_factory.mktemp("models") / "base_model"
    save(
        make_micro("policy", tok.vocab_size, seed=0),
        out,
        name="base_model",
        source="micro",
        tokenizer_sha256=tok.sha256,
    )
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, model_dir, llama2_tokenizer):
    out = tmp_path_factory.mktemp("eval") / "eval_base_model_humaneval"
    metrics = evaluate(model_dir, llama2_tokenizer, "humaneval", out, PARAMS, progress=False)
    return out, metrics


def test_evaluation_directory_is_complete_and_consistent(evaluated):
    out, metrics = evaluated
    verify(out)
    assert metrics["model"] == "base_model" and metrics["task"] == "humaneval"
    assert (metrics["n_tasks"], metrics["n_tasks_available"], metrics["limit"]) == (2, 164, 2)
    samples = pl.read_parquet(out / "samples.parquet")
    assert samples.height == 2 * 2
    assert samples["task_id"].unique().sort().to_list() == ["HumanEval/0", "HumanEval/1"]
    assert set(samples["status"]) <= {"passed", "failed", "timeout", "error"}
    assert samples["n_tokens"].max() <= PARAMS.max_new_tokens
    assert set(samples["finish_reason"]) <= {"eos", "stop", "length"}
    # pass@k recomputed from the stored outcomes agrees with the metrics (random weights: nothing passes).
    per_task = pl.read_parquet(out / "per_task.parquet")
    assert (
        per_task["c"].to_list()
        == samples.group_by("task_id", maintain_order=True).agg(pl.col("passed").sum())["passed"].to_list()
    )
    assert metrics["pass_at_k"] == {"1": 0.0, "2": 0.0}
    assert sum(metrics["outcomes"].values()) == 4
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_speculative_measurement_on_task_prompts(evaluated):
    out, metrics = evaluated
    spec = metrics["speculative"]
    assert spec["prompts"] == 1 and spec["n_heads"] == 4
    assert spec["identical_to_greedy"] is True
    assert 1 <= spec["tokens"] <= 8 and spec["forward_passes"] <= spec["tokens"]
    assert len(spec["acceptance_rate_per_head"]) == 3
    # Timed by the shared timer: warm-up, repeats, a median with its range; a figure or the reason for none.
    assert (spec["repeats"], spec["warmup"], spec["order"]) == (REPEATS, WARMUP, "alternating")
    assert len(spec["speedup_per_repeat"]) == len(spec["greedy_seconds_per_repeat"]) == REPEATS
    assert spec["speedup_min"] <= spec["speedup_median"] <= spec["speedup_max"]
    assert (spec["speedup"] is None) == bool(spec["speedup_not_meaningful"])
    if spec["tokens_per_forward"] == 1.0:
        assert "1.00 tokens per forward" in spec["speedup_not_meaningful"]
    table = pl.read_parquet(out / "speculative.parquet")
    assert table["task_id"].to_list() == ["HumanEval/0"] and table["identical"].all()
    assert table["tokens"].to_list() == [spec["tokens"]]


def test_report_over_the_evaluation(evaluated, tmp_path):
    out, _ = evaluated
    summary = write_report([out], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| base_model | 0.000 | 0.000 |" in md
    assert "2 of 164 (limit 2)" in md
    assert summary["limited"] is True
    assert (tmp_path / "pass_at_k.png").stat().st_size > 0 and (
        tmp_path / "speculative.png"
    ).stat().st_size > 0


def test_command_line_help_and_bad_option(model_dir, llama2_tokenizer, tmp_path):
    runner = CliRunner()
    assert "pass@k" in runner.invoke(evaluate_command, ["--help"]).output
    bad = runner.invoke(
        evaluate_command,
        [
            str(model_dir),
            str(llama2_tokenizer),
            "humaneval",
            str(tmp_path / "o"),
            "--n-samples",
            "2",
            "--k",
            "5",
        ],
    )
    assert bad.exit_code != 0 and "k <= n_samples" in bad.output


def test_tokenizer_of_another_model_is_refused(tmp_path, model_dir):
    from wmtp_core.tokenizer import train_tokenizer

    other = train_tokenizer(
        [f"def f{i}(x):\n    return x + {i}\n" for i in range(200)], tmp_path / "o.model", 300
    )
    with pytest.raises(ValueError, match="SHA256"):
        evaluate(model_dir, other, "humaneval", tmp_path / "out", PARAMS, progress=False)


def test_long_prompt_is_cut_from_the_left_keeping_bos(llama2_tokenizer):
    from wmtp_core.eval.evaluate import encode_prompt
    from wmtp_core.model import ModelArgs, Transformer

    tok = Tokenizer(llama2_tokenizer)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, max_seq_len=40))
    text = "".join(f"assert f({i}) == {i * i}\n" for i in range(30))
    full = tok.encode(text.rstrip(), bos=True)  # prompts are right-stripped before encoding
    ids, cut = encode_prompt(model, tok, text, max_new_tokens=16)
    assert cut and len(ids) == 40 - 16
    assert ids[0] == tok.bos_id and ids[1:] == full[-(40 - 16 - 1) :]
    short, cut = encode_prompt(model, tok, "def f(x):\n", max_new_tokens=16)
    assert not cut and short == tok.encode("def f(x):", bos=True)
    with pytest.raises(ValueError, match="no room"):
        encode_prompt(model, tok, "x", max_new_tokens=39)


LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


@pytest.mark.slow
def test_evaluation_assets_materialize_and_log_to_mlflow(tmp_path, repo_root, llama2_tokenizer):
    """The base model's evaluations as assets; the policies' and the report need trained models: the fresh-clone
    demo and the DVC pipeline test build those."""
    import dagster as dg
    import mlflow

    from assets import data, evaluation, models, sources
    from dagster_defs.resources import build_resources

    root = tmp_path / "main"
    root.mkdir()
    (tmp_path / "shared").symlink_to(repo_root.parent / "shared")  # params' ../shared/data paths resolve
    (root / "params.yaml").write_text(
        f"tokenizer:\n  path: {llama2_tokenizer}\n  sha256: {LLAMA2_SHA256}\n"
        "evaluation:\n  n_samples: 2\n  k: [1, 2]\n  max_new_tokens: 8\n  limit: 2\n  workers: 2\n"
        "  speculative_prompts: 1\n  speculative_max_new_tokens: 6\n"
        "experiment_report:\n  title: asset test\n"
    )
    resources = build_resources(root / "storage", root / "params.yaml")
    upstream = [sources.codecontests_raw, sources.tokenizer, models.base_model, data.humaneval_processed,
                data.mbpp_processed]  # fmt: skip
    base_evaluations = [a for a in evaluation.evaluations if a.key.to_user_string().startswith("eval_base_model_")]
    assert len(base_evaluations) == 2
    result = dg.materialize([*upstream, *base_evaluations], resources=resources)
    assert result.success
    storage = root / "storage" / "evaluation"
    for task in ("humaneval", "mbpp"):
        metrics = json.loads((storage / f"eval_base_model_{task}" / "metrics.json").read_text())
        assert (metrics["model"], metrics["task"], metrics["limit"], metrics["n_tasks"]) == (
            "base_model",
            task,
            2,
            2,
        )
        assert metrics["speculative"]["identical_to_greedy"] is True

    client = mlflow.MlflowClient(tracking_uri=resources["mlflow"].tracking_uri)
    runs = client.search_runs(experiment_ids=[resources["mlflow"].experiment_id()])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"eval_base_model_humaneval", "eval_base_model_mbpp"}
    assert by_name["eval_base_model_humaneval"].data.metrics["pass_at_1"] == 0.0
