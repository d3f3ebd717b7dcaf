"""The `train:` section of params.yaml: shared defaults plus one block per recipe.

A recipe's block holds only what differs from `defaults`; `TrainParams` merges the two while validating, so
`params.train.verifiable` is the complete, resolved configuration of that recipe, and an unknown key or a value
out of range stops the run naming `train.<recipe>.<key>`. A plain mapping of recipe names to models, no registry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from wmtp_core.section import Section

Recipe = Literal["critic", "reference", "baseline", "verifiable", "rho1", "random_matched", "shuffled"]
RECIPES: tuple[str, ...] = Recipe.__args__  # type: ignore[attr-defined]


class TrainDefaults(Section):
    """What every recipe shares unless its block overrides it."""

    seed: int = Field(0, description="seed of initialisation noise, data order and the weight controls")
    lr: float = Field(3e-4, gt=0, description="peak learning rate of AdamW")
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="linear warmup, as a fraction of the optimizer steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decays to lr x min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null = no clipping")
    batch_size: int = Field(4, ge=1, description="rows per rank per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; exactly one of max_steps, epochs")
    epochs: float | None = Field(1.0, gt=0, description="passes over the sampled rows")
    eval_every: int = Field(10, ge=1, description="validation loss on the valid split every N optimizer steps")
    eval_rows: int | None = Field(32, ge=1, description="rows of the valid split used for validation; null = all")
    log_every: int = Field(1, ge=1, description="metrics to MLflow every N optimizer steps")
    checkpoint_every: int = Field(10, ge=1, description="resumable state saved every N optimizer steps")
    keep_checkpoints: int = Field(2, ge=1)
    max_tokens: int = Field(2048, ge=8, description="longest row (BOS + prompt + response + EOS) a batch may hold")
    activation_checkpointing: bool = False
    trainable: Literal["all", "heads"] = Field(
        "all",
        description="all: every policy weight; heads: the head blocks (head 1 and the extra heads) and the value "
        "head, with the trunk, embeddings, final norm and unembedding frozen (a pretrained model on a few CPU "
        "cores: the trunk runs without gradients)",
    )
    mixed_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 parameters and autocast with fp32 gradient reduction on CUDA, fp32 on CPU"
    )
    save_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype of the written policy; null = the dtype training started from"
    )

    @model_validator(mode="before")
    @classmethod
    def _steps_replace_epochs(cls, raw: Any) -> Any:
        # `max_steps: 20` alone means a step limit: the epochs default must not also apply.
        if isinstance(raw, dict) and raw.get("max_steps") is not None and "epochs" not in raw:
            return {**raw, "epochs": None}
        return raw

    @model_validator(mode="after")
    def _one_limit(self) -> TrainDefaults:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError(
                f"set exactly one of max_steps ({self.max_steps}) and epochs ({self.epochs}); the other null"
            )
        return self


class CriticParams(TrainDefaults):
    """Value-head pretraining on stage-1 rows: target R (is_correct) at every response token, MSE, gamma 1."""

    freeze_trunk: bool = Field(True, description="train the value head only (the policy's weights stay as given)")
    pairwise: bool = Field(
        False, description="add a Bradley-Terry loss on the final values of a correct and an incorrect row of one "
        "problem in the batch",
    )
    pairwise_coef: float = Field(1.0, ge=0)


class WeightedParams(TrainDefaults):
    """TD-error token weights from the critic (verifiable, and the random_matched and shuffled controls)."""

    beta: float = Field(0.9, gt=0, description="temperature of exp(td / beta)")
    min_weight: float = Field(0.1, ge=0)
    max_weight: float = Field(5.0, gt=0)
    gamma: float = Field(1.0, gt=0, le=1)
    value_coef: float = Field(0.5, ge=0, description="total loss = weighted CE + value_coef x value loss")
    value_clip: float | None = Field(
        0.2, gt=0, description="PPO-style clip of the value loss around the critic asset's own values; null = none"
    )

    @model_validator(mode="after")
    def _weight_range(self) -> WeightedParams:
        if self.min_weight > self.max_weight:
            raise ValueError(f"min_weight {self.min_weight} is above max_weight {self.max_weight}")
        return self


class Rho1Params(TrainDefaults):
    """Rho-1 token selection by excess loss over the tuned reference."""

    ratio: float = Field(0.6, gt=0, le=1, description="fraction of each head's valid tokens kept (mode select)")
    mode: Literal["select", "soft"] = "select"
    temperature: float = Field(1.0, gt=0, description="softmax temperature of mode soft")
    global_selection: bool = Field(
        True, description="select over the valid tokens of every rank together (as one process would)"
    )


class TrainParams(Section):
    """`train:` of params.yaml. Each recipe's block is `defaults` overridden by what the block sets."""

    defaults: TrainDefaults = Field(default_factory=TrainDefaults)
    critic: CriticParams = Field(default_factory=CriticParams)
    reference: TrainDefaults = Field(default_factory=TrainDefaults)
    baseline: TrainDefaults = Field(default_factory=TrainDefaults)
    verifiable: WeightedParams = Field(default_factory=WeightedParams)
    rho1: Rho1Params = Field(default_factory=Rho1Params)
    random_matched: WeightedParams = Field(default_factory=WeightedParams)
    shuffled: WeightedParams = Field(default_factory=WeightedParams)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        defaults = raw.get("defaults") or {}
        if not isinstance(defaults, dict):
            return raw  # pydantic reports the type error at train.defaults
        merged = dict(raw)
        for recipe in RECIPES:
            block = raw.get(recipe) or {}
            if isinstance(block, dict):
                # A block that sets max_steps drops the default epochs (and the reverse): one limit per recipe.
                base = dict(defaults)
                for limit, other in (("max_steps", "epochs"), ("epochs", "max_steps")):
                    if limit in block and other not in block:
                        base.pop(other, None)
                merged[recipe] = {**base, **block}
        return merged

    def recipe(self, name: str) -> TrainDefaults:
        if name not in RECIPES:
            raise ValueError(f"recipe {name!r}: expected one of {', '.join(RECIPES)}")
        return getattr(self, name)
