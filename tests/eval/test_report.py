"""The experiment report: side-by-side pass@k and its change against the base model, speculative acceptance,
coverage, completions, the training runs (held-out loss, curves, token weights), plots, DVC metrics, UI tables."""

from __future__ import annotations

import json

import pytest

from wmtp_core.eval.params import ExperimentReportParams
from wmtp_core.eval.report import ReportError, load_evaluation, ui_tables, write_report


def _metrics(model, task, scores, *, limit=None, n_tasks=164, spec=None):
    return {
        "model": model,
        "task": task,
        "n_tasks": limit or n_tasks,
        "n_tasks_available": n_tasks,
        "limit": limit,
        "n_samples": 10,
        "pass_at_k": {str(k): v for k, v in scores.items()},
        "speculative": spec,
    }


def _spec(tpf, speedup, rates, *, reason=None):
    """A speculative block as `wmtp_core.eval.timing.compare_with_greedy` records it."""
    return {
        "prompts": 8,
        "tokens_per_forward": tpf,
        "repeats": 5,
        "warmup": 1,
        "speedup_median": speedup,
        "speedup_min": speedup - 0.1,
        "speedup_max": speedup + 0.1,
        "speedup": None if reason else speedup,
        "speedup_not_meaningful": reason,
        "identical_to_greedy": True,
        "acceptance_rate_per_head": rates,
    }


@pytest.fixture
def eval_dirs(tmp_path):
    evaluations = [
        _metrics("base_model", "humaneval", {1: 0.125, 10: 0.3}, spec=_spec(2.5, 1.9, [0.8, 0.6, 0.4])),
        _metrics(
            "base_model", "mbpp", {1: 0.2, 10: 0.45}, n_tasks=500, spec=_spec(2.1, 1.6, [0.7, 0.5, 0.3])
        ),
        _metrics("policy_rho1", "humaneval", {1: 0.15, 10: 0.35}, limit=20),
        _metrics("policy_rho1", "mbpp", {1: 0.25, 10: 0.5}, n_tasks=500),
    ]
    return _write(tmp_path, evaluations)


def test_side_by_side_table_and_coverage(eval_dirs, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    write_report(eval_dirs, out, ExperimentReportParams(title="Weights vs none"))
    md = (out / "report.md").read_text()
    assert md.startswith("# Weights vs none")
    assert "| model | humaneval pass@1 | humaneval pass@10 | mbpp pass@1 | mbpp pass@10 |" in md
    assert "| base_model | 0.125 | 0.300 | 0.200 | 0.450 |" in md
    # Beside every score, its change against the base model on the same task.
    assert "| policy_rho1 | 0.150 (+0.025) | 0.350 (+0.050) | 0.250 (+0.050) | 0.500 (+0.050) |" in md
    assert "the change against `base_model`" in md
    # The explicit limit is stated, both in a banner and per evaluation.
    assert "limit set explicitly" in md
    assert "| policy_rho1 | humaneval | 20 of 164 (limit 20) | 10 |" in md
    assert "| base_model | mbpp | all 500 | 10 |" in md
    assert (
        "| base_model | humaneval | 8 | 2.50 | 1.90x (1.80–2.00x, 5 repeats) | yes | 0.80, 0.60, 0.40 |" in md
    )
    assert "| policy_rho1 | humaneval | – | – | – | – | not measured |" in md
    assert "![pass_at_k](pass_at_k.png)" in md and "![speculative](speculative.png)" in md


def test_json_outputs_and_plots(eval_dirs, tmp_path):
    summary = write_report(eval_dirs, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(summary))
    assert report["models"] == ["base_model", "policy_rho1"] and report["tasks"] == ["humaneval", "mbpp"]
    assert report["k"] == [1, 10]
    assert report["coverage"]["policy_rho1"]["humaneval"]["limit"] == 20
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["base_model"]["mbpp"] == {
        "pass@1": 0.2,
        "pass@10": 0.45,
        "tokens_per_forward": 2.1,
        "speculative_speedup": 1.6,
    }
    assert metrics["policy_rho1"]["humaneval"] == {"pass@1": 0.15, "pass@10": 0.35}
    for png in ("pass_at_k.png", "speculative.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duplicate_and_incomplete_evaluations_are_refused(eval_dirs, tmp_path):
    with pytest.raises(ReportError, match="two evaluations of model 'base_model' on task 'mbpp'"):
        write_report([eval_dirs[1], eval_dirs[1]], tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ReportError, match="missing keys"):
        load_evaluation(broken)
    with pytest.raises(ReportError, match="not found"):
        load_evaluation(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="no evaluations"):
        write_report([], tmp_path)


def test_command_writes_a_verified_report_directory(eval_dirs, tmp_path):
    from click.testing import CliRunner

    from wmtp_core.eval.report import report_command
    from wmtp_core.storage import verify

    out = tmp_path / "experiment_report"
    result = CliRunner().invoke(report_command, [*map(str, eval_dirs), "--out", str(out), "--title", "cli"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# cli")
    manifest = verify(out)
    assert set(manifest["files"]) == {
        "report.md",
        "report.json",
        "metrics.json",
        "pass_at_k.png",
        "speculative.png",
    }
    assert "--out" in CliRunner().invoke(report_command, ["--help"]).output


def _write(tmp_path, evaluations):
    dirs = []
    for m in evaluations:
        d = tmp_path / f"eval_{m['model']}_{m['task']}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m))
        dirs.append(d)
    return dirs


ONE_TOKEN_PER_FORWARD = (
    "1.00 tokens per forward (every proposal rejected): at one token per pass self-speculative decoding "
    "cannot beat greedy; only 9 ms of timed decoding per decoder (under 1 s): timer and scheduling noise"
)


def test_a_speedup_that_means_nothing_is_reported_as_its_reason(tmp_path, monkeypatch):
    from wmtp_core.eval import report_plots

    rejected = _spec(1.0, 1.79, [0.0, 0.0, 0.0], reason=ONE_TOKEN_PER_FORWARD)
    good = _spec(2.5, 1.9, [0.8, 0.6, 0.4])
    dirs = _write(
        tmp_path,
        [
            _metrics("base_model", "mbpp", {1: 0.2}, n_tasks=500, spec=rejected),
            _metrics("base_model", "humaneval", {1: 0.1}, spec=good),
        ],
    )
    figures = []
    # Keep the figure to look at what was drawn.
    monkeypatch.setattr(report_plots.plt, "close", figures.append)
    out = tmp_path / "report"
    out.mkdir()
    write_report(dirs, out)

    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| base_model | mbpp | 8 |"))
    assert f"| not meaningful: {ONE_TOKEN_PER_FORWARD} |" in row
    assert "1.79" not in md  # the measured ratio is no result, so it is not printed
    assert "| base_model | humaneval | 8 | 2.50 | 1.90x (1.80–2.00x, 5 repeats) |" in md

    summary = json.loads((out / "report.json").read_text())
    assert summary["speculative"]["base_model"]["mbpp"]["speedup"] is None
    assert summary["speculative"]["base_model"]["mbpp"]["speedup_not_meaningful"] == ONE_TOKEN_PER_FORWARD
    metrics = json.loads((out / "metrics.json").read_text())
    assert "speculative_speedup" not in metrics["base_model"]["mbpp"]
    assert metrics["base_model"]["mbpp"]["tokens_per_forward"] == 1.0
    assert metrics["base_model"]["humaneval"]["speculative_speedup"] == 1.9

    (spec_fig,) = [f for f in figures if f.axes[0].get_title() == "self-speculative decoding"]
    left = spec_fig.axes[0]
    assert [t.get_text() for t in left.texts] == ["speed-up\nnot meaningful"]
    points = [line for line in left.lines if line.get_marker() == "o"]
    assert [list(p.get_ydata()) for p in points] == [[1.9]]  # only the meaningful speed-up is drawn


def test_an_evaluation_timed_the_old_way_gets_no_speedup(tmp_path):
    """metrics.json written before repeated timing: one cold-vs-warm ratio, no spread, no recorded judgement."""
    old = {
        "prompts": 2,
        "tokens_per_forward": 1.0,
        "speedup": 1.79,
        "identical_to_greedy": True,
        "acceptance_rate_per_head": [0.0, 0.0, 0.0],
    }
    dirs = _write(tmp_path, [_metrics("base_model", "mbpp", {1: 0.0}, n_tasks=500, spec=old)])
    out = tmp_path / "report"
    out.mkdir()
    write_report(dirs, out)
    md = (out / "report.md").read_text()
    assert "| not meaningful: timed once, cold against warm, with no repeats or spread" in md
    assert "1.79x" not in md
    assert "speculative_speedup" not in json.loads((out / "metrics.json").read_text())["base_model"]["mbpp"]


# ---------------------------------------------------------------- training runs, completions, samples

HEADS = 4
POLICIES = {
    "policy_baseline": "baseline",
    "policy_verifiable": "verifiable",
    "policy_rho1": "rho1",
    "policy_random_matched": "random_matched",
    "policy_shuffled": "shuffled",
}


def _histogram(edges, counts, label):
    return {"edges": [float(e) for e in edges], "counts": list(counts), "label": label}


def _td_weights(seed):
    edges = [0.1 + 0.245 * i for i in range(21)]  # clip(exp(delta / beta), 0.1, 5) fills 0.1..5
    counts = [900 - 40 * abs(i - 4 - seed) for i in range(20)]
    counts[0], counts[-1] = 1500 + 50 * seed, 40  # the clipped tokens pile up in the end bins
    return {
        "weights": _histogram(edges, [max(c, 3) for c in counts], "TD weight clip(exp(delta/beta), 0.1, 5)")
    }


def _rho1_histograms():
    edges = [-2.0 + 0.25 * i for i in range(25)]
    out = {}
    for k in range(1, HEADS + 1):
        selected = [0] * 10 + [100 * (i + 1) // k + 5 for i in range(14)]
        rejected = [60 * (i + 1) + 10 * k for i in range(10)] + [0] * 14
        out[f"rho1/head{k}/selected"] = _histogram(edges, selected, f"excess loss of head {k}, selected")
        out[f"rho1/head{k}/rejected"] = _histogram(edges, rejected, f"excess loss of head {k}, rejected")
        out[f"rho1/head{k}/weights"] = _histogram([0.0, 0.5, 1.0], [sum(rejected), sum(selected)], "weight")
    return out


def training_dir(root, name, recipe, *, steps=200, every=10, valid_every=50, histograms=None, offset=0.0):
    """A training asset directory in the format the trainer writes: result.json, history.jsonl and, for the
    weighted recipes, token_weights.json."""
    d = root / name
    d.mkdir(parents=True)
    heads = 1 if recipe == "reference" else HEADS
    history = []
    for step in range(every, steps + 1, every):
        row = {"step": step, "lr": 3e-4, "tokens_per_s": 1000.0}
        if recipe == "critic":
            row["value/loss"] = 0.25 * 0.98**step + 0.05
            row["loss/total"] = row["value/loss"]
        else:
            for k in range(1, heads + 1):
                row[f"loss/head{k}"] = row[f"ce/head{k}"] = 1.0 + 0.3 * k + 2.0 * 0.99**step + offset
            row["loss/total"] = sum(row[f"loss/head{k}"] for k in range(1, heads + 1)) / heads
        if step % valid_every == 0 and recipe != "critic":
            row.update(
                {
                    f"valid/loss/head{k}": 1.1 + 0.3 * k + 1.5 * 0.99**step + offset
                    for k in range(1, heads + 1)
                }
            )
        history.append(row)
    final = {k: v for k, v in history[-1].items() if k != "step"}
    result = {
        "recipe": recipe,
        "steps": steps,
        "tokens": steps * 4096,
        "rows": 1234,
        "world_size": 2,
        "train_seconds": 61.5,
        "mlflow_run_id": f"run-{name}",
        "model_sha256": {"model.safetensors": "0" * 64},
        "checkpoint_sha256": "1" * 64,
        "final": final,
    }
    (d / "result.json").write_text(json.dumps(result))
    (d / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    if histograms is not None:
        (d / "token_weights.json").write_text(json.dumps({"recipe": recipe, "histograms": histograms}))
    return d


def training_dirs(root):
    """The five policies, the tuned reference and the critic, as the pipeline trains them."""
    weights = {"verifiable": _td_weights(0), "random_matched": _td_weights(2), "shuffled": _td_weights(4)}
    weights["rho1"] = _rho1_histograms()
    dirs = [
        training_dir(root, name, recipe, histograms=weights.get(recipe), offset=0.02 * i)
        for i, (name, recipe) in enumerate(POLICIES.items())
    ]
    dirs.append(training_dir(root, "reference_tuned", "reference", offset=-0.2))
    dirs.append(training_dir(root, "critic", "critic"))
    return dirs


def samples_parquet(eval_dir, completions, *, n_tokens=True):
    """samples.parquet as `wmtp evaluate` writes it: one row per (task, sample)."""
    import polars as pl

    rows = [
        {
            "task_id": task_id,
            "sample": sample,
            "completion": text,
            "status": "passed" if sample == 0 else "failed",
            "passed": sample == 0,
            "stderr_tail": "",
            "wall_s": 0.01,
            "finish_reason": "eos" if n_tokens else None,
            "n_tokens": len(text) // 4 if n_tokens else None,
        }
        for task_id, texts in completions.items()
        for sample, text in enumerate(texts)
    ]
    schema = {"sample": pl.Int64, "finish_reason": pl.String, "n_tokens": pl.Int64}
    pl.DataFrame(rows, schema_overrides=schema).write_parquet(eval_dir / "samples.parquet")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Evaluations of the base model and two policies (with samples), and every training run."""
    root = tmp_path_factory.mktemp("experiment")
    evaluations = [
        _metrics("base_model", "humaneval", {1: 0.125, 10: 0.3}, spec=_spec(2.5, 1.9, [0.8, 0.6, 0.4])),
        _metrics("base_model", "mbpp", {1: 0.2, 10: 0.45}, n_tasks=500),
        _metrics("policy_rho1", "humaneval", {1: 0.15, 10: 0.35}),
        _metrics("policy_rho1", "mbpp", {1: 0.25, 10: 0.5}, n_tasks=500),
        _metrics("policy_verifiable", "humaneval", {1: 0.1, 10: 0.3}),
    ]
    evals = _write(root, evaluations)
    code = "    return sorted(xs)\n"
    for d in evals:
        samples_parquet(
            d, {"HumanEval/0": [code, "pass\n"], "HumanEval/1": ["return 1\n" * 100, ""], "X/2": ["x"]}
        )
    return evals, training_dirs(root / "training")


@pytest.fixture(scope="module")
def written(experiment, tmp_path_factory):
    """The report over `experiment`, written once (plotting takes seconds): its directory, the returned summary
    and the figures drawn."""
    from wmtp_core.eval import report_plots

    evals, trainings = experiment
    out = tmp_path_factory.mktemp("report")
    figures = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_plots.plt, "close", figures.append)  # keep the figures to look at what was drawn
        params = ExperimentReportParams(samples_per_model=1, sample_chars=40, plot_dpi=50)
        summary = write_report(evals, out, params, training_dirs=trainings)
    return out, summary, figures


def test_experiments_side_by_side(experiment, written):
    evals, _ = experiment
    out, summary, _ = written
    md = (out / "report.md").read_text()

    assert "| policy_rho1 | 0.150 (+0.025) | 0.350 (+0.050) | 0.250 (+0.050) | 0.500 (+0.050) |" in md
    assert "| policy_verifiable | 0.100 (-0.025) | 0.300 (+0.000) | – | – |" in md
    assert "| base_model | 0.125 | 0.300 | 0.200 | 0.450 |" in md  # the baseline itself has no change
    # The mean n_tokens of every sample of the evaluation: (5 + 1 + 225 + 0 + 0) / 5.
    assert "## Mean completion length (tokens)" in md and "| policy_verifiable | 46.2 | – |" in md
    assert "| policy_rho1 | rho1 | 1.641 | 1.941 | 2.241 | 2.541 | 2.091 |" in md
    assert "| reference_tuned | reference | 1.401 | – | – | – | – |" in md
    assert "| critic | critic |" not in md.split("## Held-out")[1].split("## Training runs")[0]
    assert "| policy_shuffled | shuffled | 200 | 819,200 | 1,234 | 2 | 61.5 | run-policy_shuffled |" in md
    assert "| policy_verifiable | `weights` | " in md and "| policy_rho1 | `rho1/head2/selected` |" in md
    assert "policy_rho1: tokens Rho-1 selected: head 1 75.7%, head 2 60.3%, head 3 49.8%, head 4 42.1%." in md
    # One sample per evaluation: the first sample of the first task, cut at 40 characters.
    assert md.count("**HumanEval/0**, sample 0: passed, 5 tokens") == len(evals)
    assert "**HumanEval/1**" not in md
    for png in ("heldout_loss", "training_curves", "token_weights"):
        assert f"![{png}]({png}.png)" in md

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(summary))
    assert report["plots"] == [
        "pass_at_k.png",
        "speculative.png",
        "heldout_loss.png",
        "training_curves.png",
        "token_weights.png",
    ]
    for png in report["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["baseline"] == "base_model"
    assert report["delta_vs_baseline"]["policy_rho1"]["humaneval"] == {"1": 0.025, "10": 0.05}
    assert "base_model" not in report["delta_vs_baseline"]
    assert report["completion_length"]["policy_rho1"]["humaneval"] == 46.2
    assert report["samples"]["policy_rho1"]["humaneval"] == [
        {
            "task_id": "HumanEval/0",
            "sample": 0,
            "status": "passed",
            "passed": True,
            "n_tokens": 5,
            "completion": "    return sorted(xs)\n",
            "chars": 22,
            "truncated": False,
        }
    ]
    assert [t["model"] for t in report["training"]] == [*POLICIES, "reference_tuned", "critic"]
    assert report["training"][0] == {
        "model": "policy_baseline",
        "recipe": "baseline",
        "steps": 200,
        "tokens": 819200,
        "rows": 1234,
        "world_size": 2,
        "train_seconds": 61.5,
        "mlflow_run_id": "run-policy_baseline",
    }
    assert set(report["heldout_loss"]["policies"]) == set(POLICIES)
    assert report["heldout_loss"]["reference"] == {
        "reference_tuned": pytest.approx(1.4 + 1.5 * 0.99**200 - 0.2)
    }
    assert set(report["weights"]) == {
        "policy_verifiable",
        "policy_rho1",
        "policy_random_matched",
        "policy_shuffled",
    }
    assert report["weights"]["policy_rho1"]["selected_fraction"]["head1"] == pytest.approx(10570 / 13970)
    curves = report["curves"]
    assert [p[0] for p in curves["policy_rho1"]["valid/loss/mean"]] == [50, 100, 150, 200]
    assert len(curves["policy_rho1"]["loss/total"]) == 20 and "valid/loss/mean" not in curves["critic"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["policy_rho1"]["humaneval"]["mean_completion_tokens"] == 46.2
    assert metrics["policy_rho1"]["heldout"] == report["heldout_loss"]["policies"]["policy_rho1"]
    assert set(metrics["policy_rho1"]["heldout"]) == {"head1", "head2", "head3", "head4"}
    assert metrics["reference_tuned"] == {
        "heldout": {"head1": report["heldout_loss"]["reference"]["reference_tuned"]}
    }
    assert "critic" not in metrics


def test_ui_tables_are_flat_rows_with_fixed_columns(written):
    out, summary, _ = written
    tables = ui_tables(summary)
    # The same rows from report.json, whose dicts come back sorted.
    assert ui_tables(json.loads((out / "report.json").read_text())) == tables
    columns = {
        "pass_at_k": ["model", "task", "k", "pass_at_k", "baseline_pass_at_k", "delta_vs_baseline"],
        "completion_length": ["model", "task", "mean_completion_tokens"],
        "heldout_loss": ["model", "recipe", "head", "heldout_loss"],
        "training": [
            "model",
            "recipe",
            "steps",
            "tokens",
            "rows",
            "world_size",
            "train_seconds",
            "mlflow_run_id",
        ],
    }
    assert {name: [list(row) for row in rows][:1] for name, rows in tables.items()} == {
        name: [cols] for name, cols in columns.items()
    }
    for rows in tables.values():
        assert all(list(row) == list(rows[0]) for row in rows)
        assert all(v is None or isinstance(v, str | int | float) for row in rows for v in row.values())
    assert tables["pass_at_k"][0] == {
        "model": "base_model",
        "task": "humaneval",
        "k": 1,
        "pass_at_k": 0.125,
        "baseline_pass_at_k": 0.125,
        "delta_vs_baseline": None,
    }
    assert {"model": "policy_rho1", "task": "mbpp", "k": 10, "pass_at_k": 0.5} | {
        "baseline_pass_at_k": 0.45,
        "delta_vs_baseline": 0.05,
    } in tables["pass_at_k"]
    assert len(tables["pass_at_k"]) == 10 and len(tables["completion_length"]) == 5
    assert [(r["model"], r["head"]) for r in tables["heldout_loss"]][-2:] == [
        ("policy_shuffled", 4),
        ("reference_tuned", 1),
    ]
    assert len(tables["heldout_loss"]) == 5 * HEADS + 1 and len(tables["training"]) == 7


def test_the_plots_say_what_they_show(written):
    _, _, figures = written
    by_title = {ax.get_title(): ax for fig in figures for ax in fig.axes if ax.get_visible()}

    heldout = by_title["held-out loss per head at the end of training"]
    assert [t.get_text() for t in heldout.get_legend().get_texts()] == [
        *POLICIES,
        "reference_tuned (next-token reference)",
    ]
    assert "nats/token" in heldout.get_ylabel() and len(heldout.get_xticklabels()) == HEADS
    assert len(heldout.patches) == 5 * HEADS + 1  # the reference: one bar, in head 1's group

    for title, n_lines in (
        ("training objective (loss/total)", 6),
        ("held-out loss, mean over heads", 6),
        ("critic: value loss", 1),
    ):
        ax = by_title[title]
        assert ax.get_xlabel() == "step" and ax.get_ylabel() and len(ax.get_legend().get_texts()) == n_lines

    weight_titles = [t for t in by_title if "(rho1): head" in t or t.endswith(("(verifiable)", "(shuffled)"))]
    assert len(weight_titles) == 2 + HEADS
    rho1 = by_title["policy_rho1 (rho1): head 2"]
    assert [t.get_text() for t in rho1.get_legend().get_texts()] == ["selected", "rejected"]
    assert rho1.get_xlabel() == "excess loss vs reference (nats)" and rho1.get_ylabel() == "tokens"
    assert (
        by_title["policy_verifiable (verifiable)"].get_xlabel() == "TD weight clip(exp(delta/beta), 0.1, 5)"
    )


def test_untrusted_completions_are_rendered_inert(tmp_path):
    from wmtp_core.eval.report_markdown import fenced, printable

    assert printable("a\x1b[31mb\u202ec\r\u2028d\te\n") == "a\\x1b[31mb\\u202ec\\x0d\\u2028d\te\n"
    assert fenced("x ````` y") == "``````text\nx ````` y\n``````"
    assert fenced("plain") == "```text\nplain\n```"

    head = "````\n# not a heading\n\x07bell \u202eevil\u202c ```` done\n"
    nasty = head + "é" * 100
    (d,) = _write(tmp_path, [_metrics("base_model", "humaneval", {1: 0.5})])
    samples_parquet(d, {"Task`<b>|1": [nasty]})
    out = tmp_path / "report"
    out.mkdir()
    write_report([d], out, ExperimentReportParams(sample_chars=60))
    md = (out / "report.md").read_text(encoding="utf-8")
    assert not any(ch in md for ch in "\x07\u202e\u202c\r")
    assert "**Task\\`\\<b\\>\\|1**, sample 0: passed" in md
    block = md.split("**, sample 0: passed")[1]
    assert "\n`````text\n````\n# not a heading\n\\x07bell \\u202eevil\\u202c ```` done\n" in block
    assert block.count("`````") == 2  # the fence opens and closes around the whole completion, nothing else
    assert f"(first 60 of {len(nasty)} characters)" in block
    kept = 60 - len(head)  # cut at 60 characters
    assert "é" * kept + "\n`````" in block and "é" * (kept + 1) not in block
    # The full, uncut text is not in report.json either; JSON escapes what remains.
    assert (
        json.loads((out / "report.json").read_text())["samples"]["base_model"]["humaneval"][0]["completion"]
        == (nasty[:60])
    )


def test_completion_lengths_tolerate_what_was_not_recorded(tmp_path):
    dirs = _write(
        tmp_path,
        [
            _metrics("base_model", "humaneval", {1: 0.5}),
            _metrics("file_completions", "humaneval", {1: 0.25}),
            _metrics("no_samples", "humaneval", {1: 0.0}),
        ],
    )
    samples_parquet(dirs[0], {"HumanEval/0": ["12345678", "1234"]})
    samples_parquet(dirs[1], {"HumanEval/0": ["12345678"]}, n_tokens=False)
    out = tmp_path / "report"
    out.mkdir()
    summary = write_report(dirs, out, ExperimentReportParams(samples_per_model=0))
    assert summary["completion_length"] == {
        "base_model": {"humaneval": 1.5},
        "file_completions": {"humaneval": None},
    }
    md = (out / "report.md").read_text()
    assert "| base_model | 1.5 |" in md and "| file_completions | – |" in md and "| no_samples | – |" in md
    assert summary["samples"] == {} and "## Sample completions" not in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_model"]["humaneval"]["mean_completion_tokens"] == 1.5
    assert "mean_completion_tokens" not in metrics["file_completions"]["humaneval"]
    # No training runs: no training sections, no training plots.
    assert "## Held-out loss" not in md and "## Training runs" not in md and "## Token weights" not in md
    assert summary["plots"] == ["pass_at_k.png"]


def test_a_training_run_with_missing_figures_is_reported_with_gaps(tmp_path):
    (d,) = _write(tmp_path, [_metrics("base_model", "humaneval", {1: 0.5})])
    run = tmp_path / "policy_baseline"
    run.mkdir()
    (run / "result.json").write_text(
        json.dumps({"recipe": "baseline", "final": {"valid/loss/head1": float("nan")}})
    )
    out = tmp_path / "report"
    out.mkdir()
    summary = write_report([d], out, training_dirs=[run])
    md = (out / "report.md").read_text()
    assert "| policy_baseline | baseline | – | – | – | – | – | – |" in md
    assert summary["heldout_loss"] == {"policies": {}, "reference": {}} and summary["curves"] == {}
    assert summary["plots"] == ["pass_at_k.png"]  # no held-out loss, history or token weights to draw


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "result.json").unlink(), r"policy_rho1/result\.json: training result not found"),
        (lambda d: (d / "result.json").write_text("{"), r"result\.json: not valid JSON"),
        (lambda d: (d / "result.json").write_text('{"steps": 3}'), r"result\.json: key 'recipe' missing"),
        (
            lambda d: (d / "result.json").write_text('{"recipe": "rho1", "steps": "many"}'),
            r"result\.json: key 'steps': expected a number, got 'many'",
        ),
        (
            lambda d: (d / "history.jsonl").write_text('{"step": 1}\n{"loss/total": 2.0}\n'),
            r"history\.jsonl: line 2: key 'step' missing",
        ),
        (
            lambda d: (d / "token_weights.json").write_text(
                json.dumps({"histograms": {"rho1/head1/selected": {"edges": [0, 1], "counts": [1, 2]}}})
            ),
            r"token_weights\.json: histograms\['rho1/head1/selected'\]: 2 edges for 2 counts; expected "
            r"len\(counts\) \+ 1 = 3",
        ),
        (
            lambda d: (d / "token_weights.json").write_text(
                json.dumps({"histograms": {"weights": {"edges": [0, 2, 1], "counts": [1, 2]}}})
            ),
            r"token_weights\.json: histograms\['weights'\]: key 'edges' must be finite and increasing",
        ),
        (
            lambda d: (d / "token_weights.json").write_text(
                json.dumps({"histograms": {"weights": {"edges": [0, 1], "counts": [-1]}}})
            ),
            r"token_weights\.json: histograms\['weights'\]: key 'counts': expected a whole number >= 0",
        ),
        (
            lambda d: (d / "token_weights.json").write_text("{}"),
            r"token_weights\.json: key 'histograms' missing",
        ),
    ],
)
def test_bad_training_input_names_the_file_and_key(tmp_path, break_it, message):
    (d,) = _write(tmp_path, [_metrics("base_model", "humaneval", {1: 0.5})])
    run = training_dir(tmp_path / "training", "policy_rho1", "rho1", steps=20, histograms=_rho1_histograms())
    break_it(run)
    with pytest.raises(ReportError, match=message):
        write_report([d], tmp_path, training_dirs=[run])


def test_two_runs_of_one_name_and_a_broken_samples_file_are_refused(tmp_path):
    (d,) = _write(tmp_path, [_metrics("base_model", "humaneval", {1: 0.5})])
    runs = [training_dir(tmp_path / side, "policy_rho1", "rho1", steps=20) for side in ("a", "b")]
    with pytest.raises(ReportError, match="two directories named 'policy_rho1'"):
        write_report([d], tmp_path, training_dirs=runs)
    (d / "samples.parquet").write_text("not parquet")
    with pytest.raises(ReportError, match=r"samples\.parquet: cannot read"):
        write_report([d], tmp_path)
    import polars as pl

    pl.DataFrame({"task_id": ["t"], "sample": [0]}).write_parquet(d / "samples.parquet")
    with pytest.raises(ReportError, match=r"samples\.parquet: missing columns \['completion', 'status'"):
        write_report([d], tmp_path)


def test_command_takes_training_runs(experiment, tmp_path):
    from click.testing import CliRunner

    from wmtp_core.eval.report import report_command
    from wmtp_core.storage import verify

    evals, trainings = experiment
    out = tmp_path / "experiment_report"
    args = [*map(str, evals), "--out", str(out), *(a for d in trainings for a in ("--training", str(d)))]
    result = CliRunner().invoke(report_command, args)
    assert result.exit_code == 0, result.output
    assert "## Held-out loss per head" in result.output
    manifest = verify(out)
    assert {"heldout_loss.png", "training_curves.png", "token_weights.png"} <= set(manifest["files"])
    assert manifest["counts"] == {"evaluations": len(evals), "training_runs": len(trainings)}
    other = CliRunner().invoke(
        report_command, [*map(str, evals), "--out", str(tmp_path / "r2"), "--baseline", "x"]
    )
    assert other.exit_code == 0 and "`x` (the baseline) was not evaluated" in other.output
    assert "--training" in CliRunner().invoke(report_command, ["--help"]).output
