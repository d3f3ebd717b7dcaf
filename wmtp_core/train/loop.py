"""The trainer: one loop for every recipe, run on every rank that torchrun starts.

    load the start model (and value head, reference) -> wrap (FSDP2 when distributed or on CUDA) -> AdamW +
    warmup/cosine -> resume from the newest checkpoint of the same job -> for each optimizer step: grad_accum
    micro-batches through `recipe_step`, clip, step; log, validate, checkpoint -> rank 0 writes the model.

A job's checkpoints carry its fingerprint (config + inputs + world size): a run resumes only its own job's state,
so a changed parameter never continues from a stale optimizer. They are removed once the model is written.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from wmtp_core import model as wm
from wmtp_core.data.collate import IGNORE_INDEX, Collator
from wmtp_core.model.io import parse_dtype
from wmtp_core.storage import sha256_file
from wmtp_core.tokenizer import Tokenizer
from wmtp_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from wmtp_core.train.data import RankStream, sampled_rows, validation_batches, validation_rows
from wmtp_core.train.distributed import (
    Trainable,
    all_reduce_sum,
    apply_fsdp,
    device_for,
    full_state_dict,
    init_distributed,
    policy_state_dict,
    teardown,
    value_head_state_dict,
)
from wmtp_core.train.job import MODEL_SUBDIR, WEIGHTED, TrainJob
from wmtp_core.train.loss import head_targets
from wmtp_core.train.recipes import (
    CE_RECIPES,
    VALUE_RECIPES,
    Denominators,
    StepContext,
    final_positions,
    freeze,
    recipe_step,
)
from wmtp_core.train.reporting import Reporter
from wmtp_core.train.stats import StatSums
from wmtp_core.train.tracking import Tracker, flatten, plot_loss_curves

FAULT_ENV = "WMTP_FAULT_KILL"  # "RANK:STEP": that rank SIGKILLs itself when it reaches STEP (fault tests)
HISTORY_FILE = "history.jsonl"
RESULT_FILE = "result.json"
CURVES_FILE = "loss_curves.png"
WEIGHTS_FILE = "token_weights.json"  # histograms of the token weights the recipe produced (weighted recipes)
FINGERPRINT_FILE = "FINGERPRINT"


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warmup to the peak, then a cosine down to min_lr_ratio x peak at the last step."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms' gains and the value head's bias keep their scale."""
    decay, keep = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _auc_and_pairs(rows: list[tuple[str, float, float]]) -> dict[str, float]:
    """On (problem, is_correct, final value) rows: ROC AUC of the final value for correctness, and how often a
    correct row's final value beats an incorrect one's of the same problem (ties count half)."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    labels = np.array([r[1] for r in rows]) > 0.5
    values = np.array([r[2] for r in rows])
    if 0 < labels.sum() < len(labels):
        out["valid/auc"] = float(roc_auc_score(labels, values))
    wins, pairs = 0.0, 0
    by_problem: dict[str, list[tuple[bool, float]]] = {}
    for problem, correct, value in rows:
        by_problem.setdefault(problem, []).append((correct > 0.5, value))
    for members in by_problem.values():
        good = np.array([v for c, v in members if c])
        bad = np.array([v for c, v in members if not c])
        if len(good) and len(bad):
            diff = good[:, None] - bad[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs += diff.size
    if pairs:
        out["valid/pair_accuracy"] = wins / pairs
        out["valid/pairs"] = float(pairs)
    return out


class Trainer:
    def __init__(self, job: TrainJob, reporter: Reporter | None = None):
        self.job = job
        self.cfg: dict[str, Any] = job.config
        self.env = init_distributed(None)
        self.rank, self.world = self.env.rank, self.env.world_size
        self.device = device_for(self.env.local_rank) if job.device.startswith("cuda") else torch.device("cpu")
        self.reporter = reporter or Reporter(self.rank == 0)
        self.group = dist.group.WORLD if self.world > 1 else None
        self.sharded = self.world > 1 or self.device.type == "cuda"
        mp = self.cfg["mixed_precision"]
        self.bf16 = self.device.type == "cuda" and mp in ("auto", "bfloat16")

    # ---------------------------------------------------------------- set-up
    def _build(self) -> None:
        job, cfg = self.job, self.cfg
        torch.manual_seed(cfg["seed"])  # the same initial weights on every rank (value head of a new critic)
        self.tokenizer = Tokenizer.from_directory(job.tokenizer_dir)
        # Every rank verifies and loads the start weights; FSDP2 then keeps only its shard.
        policy = wm.load(job.start_dir, dtype=torch.float32, verify=self.rank == 0)
        start_meta = wm.read_metadata(job.start_dir)
        self.start_dtype = start_meta.get("dtype")
        self.n_heads = policy.n_future
        value_head = None
        self.anchor = None
        if job.recipe in VALUE_RECIPES:
            if start_meta.get("value_head"):
                value_head = wm.load_value_head(job.start_dir, dtype=torch.float32, verify=self.rank == 0)
            else:
                value_head = wm.ValueHead(policy.args.dim)
                value_head.init_weights(torch.Generator().manual_seed(cfg["seed"]))
            if job.recipe in WEIGHTED and cfg.get("value_clip") is not None:
                self.anchor = copy.deepcopy(value_head).requires_grad_(False).to(self.device)
        freeze(policy, job.recipe, cfg)
        self.args = policy.args
        trainable = Trainable(policy, value_head).to(self.device)
        if self.sharded:
            trainable = apply_fsdp(trainable, param_dtype=torch.bfloat16 if self.bf16 else None,
                                   activation_checkpointing=cfg["activation_checkpointing"])  # fmt: skip
        self.trainable = trainable
        self.reference = None
        if job.recipe == "rho1":
            ref_dtype = torch.bfloat16 if self.bf16 else torch.float32
            self.reference = wm.load(job.reference_dir, dtype=ref_dtype, verify=self.rank == 0).to(self.device)
            self.reference.eval().requires_grad_(False)
            if self.reference.args.vocab_size != self.args.vocab_size:
                raise ValueError(
                    f"{job.reference_dir}: reference vocab_size {self.reference.args.vocab_size} differs from the "
                    f"policy's {self.args.vocab_size}"
                )

        betas = tuple(cfg["betas"])
        self.optimizer = torch.optim.AdamW(_param_groups(trainable, cfg["weight_decay"]), lr=cfg["lr"], betas=betas)

        collator = Collator(self.tokenizer, max_tokens=cfg["max_tokens"])
        split, row_ids = sampled_rows(job.index_file, job.sampling_stage, job.sampling)
        processed = Path(job.processed_dir)
        self.stream = RankStream(processed / f"{split}.parquet", row_ids, collator, self.rank, self.world,
                                 cfg["batch_size"], cfg["seed"], shuffle=job.sampling_stage == "stage1")  # fmt: skip
        self.n_rows = len(row_ids)
        ga = cfg["grad_accum"]
        if cfg["max_steps"] is not None:
            self.total_steps = cfg["max_steps"]
        else:
            self.total_steps = max(1, math.ceil(cfg["epochs"] * self.stream.micro_batches_per_epoch / ga))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.total_steps, cfg["warmup_ratio"], cfg["min_lr_ratio"])
        )
        # Value recipes validate the value head on correct and incorrect rows; cross-entropy counts correct rows only,
        # so every policy's validation loss is measured on the same kind of text.
        valid_ids = validation_rows(job.index_file, correct_only=job.recipe not in VALUE_RECIPES,
                                    limit=cfg["eval_rows"])  # fmt: skip
        # Every rank must run the same number of forwards (FSDP gathers are collective): equal shares.
        valid_ids = valid_ids[: len(valid_ids) - len(valid_ids) % self.world]
        self.valid = validation_batches(processed / "valid.parquet", valid_ids, collator, self.rank, self.world,
                                        cfg["batch_size"])  # fmt: skip
        # From here on each rank draws its own noise (the controls' weights), reproducibly from seed and rank.
        torch.manual_seed(cfg["seed"] * 7919 + 1 + self.rank)
        self.ctx = StepContext(
            recipe=job.recipe, cfg=cfg, n_heads=self.n_heads, reference=self.reference, anchor=self.anchor,
            group=self.group,
            autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.bf16 else nullcontext,
        )

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ---------------------------------------------------------------- checkpoints
    def _prepare_checkpoints(self) -> Path:
        """The job's checkpoint directory; one of another job (fingerprint) is cleared before anyone reads it."""
        root = Path(self.job.checkpoint_dir)
        if self.rank == 0:
            marker = root / FINGERPRINT_FILE
            if root.exists() and (not marker.is_file() or marker.read_text().strip() != self.job.fingerprint):
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.job.fingerprint + "\n")
        if self.world > 1:
            dist.barrier()
        return root

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        stats = StatSums()
        finals: list[tuple[str, float, float]] = []
        policy = self.trainable.policy
        for batch in self.valid:
            b = self._to_device(batch)
            tokens, labels = b["input_ids"], b["labels"]
            response = labels != IGNORE_INDEX
            with self.ctx.autocast():
                h = self.trainable(tokens)
                if self.job.recipe in CE_RECIPES:
                    for k in range(1, self.n_heads + 1):
                        target = head_targets(labels, k)
                        logits = policy.unembed(policy.head(h, k)).float()
                        ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                             reduction="none")  # fmt: skip
                        correct = b["reward"][:, None] > 0.5
                        stats.add_masked(f"valid/loss/head{k}", ce, (target != IGNORE_INDEX) & correct)
                if self.job.recipe in VALUE_RECIPES:
                    values = self.trainable.value_head(policy.norm(h)).float()
                    target_v = b["reward"][:, None].expand_as(values)
                    stats.add_masked("valid/value/sq_error", (values - target_v) ** 2, response)
                    stats.add_explained_variance("valid/value", values, target_v, response)
                    last = values[torch.arange(len(values)), final_positions(response)]
                    finals += list(zip(batch["problem_names"], b["reward"].tolist(), last.tolist(), strict=True))
        figures = {k.removesuffix("/mean"): v for k, v in stats.reduce(self.group).items()
                   if k.endswith(("/mean", "explained_variance"))}  # fmt: skip
        if self.job.recipe in VALUE_RECIPES:
            gathered = [finals]
            if self.world > 1:
                gathered = [None] * self.world
                dist.all_gather_object(gathered, finals)
            figures.update(_auc_and_pairs([r for part in gathered for r in part]))
        return figures

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any] | None:
        job, cfg = self.job, self.cfg
        self._build()
        ckpt_root = self._prepare_checkpoints()
        state: dict[str, Any] = {"step": 0, "tokens": 0, "history": [], "run_id": None, "elapsed": 0.0}
        resume = latest_checkpoint(ckpt_root)
        if resume is not None:
            state = load_checkpoint(resume, self.trainable, self.optimizer, self.scheduler)
            self.reporter.log(f"{job.asset}: resuming from {resume} (step {state['step']} of {self.total_steps})")
        tracker = Tracker(job.tracking_uri or "", job.artifact_location, job.experiment, job.asset,
                          enabled=self.rank == 0 and job.tracking_uri is not None, run_id=state.get("run_id"),
                          tags={"asset": job.asset, "fingerprint": job.fingerprint})  # fmt: skip
        state["run_id"] = tracker.run_id
        if resume is None:
            tracker.log_params({"recipe": job.recipe, "world_size": self.world, "rows": self.n_rows,
                                "total_steps": self.total_steps, **flatten(cfg)})  # fmt: skip
        self.reporter.log(
            f"{job.asset}: recipe {job.recipe}, {self.n_rows} rows, {self.total_steps} steps x {cfg['grad_accum']} "
            f"micro-batches x {cfg['batch_size']} rows x {self.world} ranks on {self.device}"
        )
        fault = os.environ.get(FAULT_ENV, "")
        kill_rank, kill_step = (int(x) for x in fault.split(":")) if fault else (-1, -1)

        ga, K = cfg["grad_accum"], self.n_heads
        pairwise = job.recipe == "critic" and cfg.get("pairwise", False)
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        stats = StatSums()
        stats.load_histograms(state.get("histograms"))
        bar = tqdm(total=self.total_steps, initial=state["step"], desc=job.asset, unit="step",
                   disable=self.rank != 0, dynamic_ncols=True)  # fmt: skip
        window_tokens, window_start = 0, time.perf_counter()
        try:
            for step in range(state["step"], self.total_steps):
                if self.rank == kill_rank and step == kill_step:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.trainable.train()
                started = time.perf_counter()
                batches = [self._to_device(b) for b in self.stream.batches(step * ga, (step + 1) * ga)]
                counts = Denominators.local(batches, K, pairwise).to(self.device)
                n_tokens = sum(b["attention_mask"].sum() for b in batches).double().reshape(1)
                step_tokens = int(all_reduce_sum(n_tokens).item())
                den = Denominators.from_vector(all_reduce_sum(counts), K)
                for i, batch in enumerate(batches):
                    recipe_step(self.trainable, batch, den, self.ctx, stats, loss_scale=float(self.world),
                                sync=i == ga - 1, sharded=self.sharded)  # fmt: skip
                max_norm = cfg["grad_clip"] if cfg["grad_clip"] is not None else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                state["step"] = step + 1
                state["tokens"] += step_tokens
                window_tokens += step_tokens
                state["elapsed"] += time.perf_counter() - started

                done = state["step"] == self.total_steps
                if state["step"] % cfg["log_every"] == 0 or done:
                    figures = stats.reduce(self.group)
                    now = time.perf_counter()
                    row = {"step": state["step"], "lr": lr, "grad_norm": float(grad_norm),
                           "tokens_per_s": window_tokens / max(now - window_start, 1e-9), "tokens": state["tokens"],
                           **_loss_figures(figures, K)}  # fmt: skip
                    window_tokens, window_start = 0, now
                    if state["step"] % cfg["eval_every"] == 0 or done:
                        row.update(self.validate())
                    state["history"].append(row)
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=state["step"])
                    bar.set_postfix(loss=f"{row.get('loss/total', row.get('value/loss', float('nan'))):.4f}",
                                    tok_s=f"{row['tokens_per_s']:.0f}")  # fmt: skip
                bar.update(1)
                if state["step"] % cfg["checkpoint_every"] == 0 and not done:
                    stats.fold_histograms(self.group)
                    state["histograms"] = stats.histograms()
                    save_checkpoint(ckpt_root, state["step"], self.trainable, self.optimizer, self.scheduler,
                                    state=state, keep=cfg["keep_checkpoints"])  # fmt: skip
        except BaseException:
            bar.close()
            tracker.finish("FAILED")
            raise
        bar.close()
        stats.fold_histograms(self.group)
        state["histograms"] = stats.histograms()
        result = self._write_outputs(state, tracker)
        if self.world > 1:
            dist.barrier()
        return result

    # ---------------------------------------------------------------- outputs
    def _write_outputs(self, state: dict[str, Any], tracker: Tracker) -> dict[str, Any] | None:
        """Gather the full weights (every rank takes part), then rank 0 writes the model and the run's files."""
        job, cfg = self.job, self.cfg
        full = full_state_dict(self.trainable)
        if self.rank != 0:
            return None
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        value_head = None
        vh_state = value_head_state_dict(full)
        if vh_state:
            value_head = wm.ValueHead(self.args.dim)
            value_head.load_state_dict(vh_state)
        save_dtype = parse_dtype(cfg["save_dtype"] or (self.start_dtype if isinstance(self.start_dtype, str) else None))
        last = state["history"][-1] if state["history"] else {}
        summary = {
            "recipe": job.recipe,
            "steps": state["step"],
            "tokens": state["tokens"],
            "rows": self.n_rows,
            "world_size": self.world,
            "train_seconds": round(state["elapsed"], 3),
            "mlflow_run_id": tracker.run_id,
            "final": {k: v for k, v in last.items() if k != "step"},
        }
        meta = wm.save_state_dict(
            policy_state_dict(full), self.args, out / MODEL_SUBDIR, name=job.asset, dtype=save_dtype,
            source={"format": "wmtp-train", "recipe": job.recipe, "start": job.start_dir,
                    "reference": job.reference_dir},
            tokenizer_sha256=self.tokenizer.sha256, value_head=value_head,
            extra={"train_config": cfg, "fingerprint": job.fingerprint, "steps": state["step"]},
        )  # fmt: skip
        summary["model_sha256"] = {f: sha256_file(out / MODEL_SUBDIR / f) for f in meta["files"]}
        # One digest naming the written checkpoint: its manifest lists every file's SHA256.
        summary["checkpoint_sha256"] = sha256_file(out / MODEL_SUBDIR / "MANIFEST.json")
        with open(out / HISTORY_FILE, "w") as f:
            for row in state["history"]:
                f.write(json.dumps(row) + "\n")
        plot_loss_curves(state["history"], out / CURVES_FILE, f"{job.asset} ({job.recipe})")
        (out / "config.json").write_text(json.dumps({"job": job.model_dump(mode="json")}, indent=2) + "\n")
        (out / RESULT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if state["histograms"]:
            weights = {"recipe": job.recipe, "histograms": state["histograms"]}
            (out / WEIGHTS_FILE).write_text(json.dumps(weights, indent=1) + "\n")
        tracker.log_artifact(out / CURVES_FILE)
        tracker.log_artifact(out / "config.json")
        tracker.finish("FINISHED")
        self.reporter.report(_metadata(summary))
        self.reporter.log(f"{job.asset}: {state['step']} steps done, model written (it replaces the asset next)")
        return summary


def _loss_figures(figures: dict[str, float], n_heads: int) -> dict[str, float]:
    """Logged names: per-head losses keep theirs; masked statistics drop '/mean'; a total CE across heads."""
    # A selection is 0 or 1 per token: its mean is the selected fraction, its std/min/max say nothing more.
    row = {k.removesuffix("/mean") if k.startswith(("rho1/selected", "reference/ce")) else k: v
           for k, v in figures.items()
           if not (k.startswith("rho1/selected") and k.endswith(("/std", "/min", "/max")))}  # fmt: skip
    heads = [row[f"loss/head{k}"] for k in range(1, n_heads + 1) if f"loss/head{k}" in row]
    if heads:
        row["loss/total"] = sum(heads)
    return row


def _metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat figures for the asset's materialization (Dagster plots numeric metadata across runs)."""
    meta: dict[str, Any] = {k: summary[k] for k in ("recipe", "steps", "tokens", "rows", "world_size",
                                                       "train_seconds")}  # fmt: skip
    meta["mlflow_run_id"] = summary["mlflow_run_id"] or ""
    for k, v in summary["final"].items():
        if isinstance(v, int | float) and math.isfinite(v):
            meta[f"final/{k}"] = v
    meta["model_sha256"] = {"raw_value": summary["model_sha256"], "type": "json"}  # Pipes metadata schema
    meta["checkpoint_sha256"] = summary["checkpoint_sha256"]
    return meta


def train(job: TrainJob, reporter: Reporter | None = None) -> dict[str, Any] | None:
    """Run `job` on this rank (torchrun sets RANK/WORLD_SIZE; without them, one process)."""
    trainer = Trainer(job, reporter)
    try:
        return trainer.run()
    finally:
        trainer.reporter.close()
        teardown()
