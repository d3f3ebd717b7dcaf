"""`params.yaml` sections of the evaluation stage: how completions are sampled and judged, and the report."""

from __future__ import annotations

from pydantic import Field, model_validator

from wmtp_core.section import Section


class EvaluationParams(Section):
    """One evaluation asset per (model, task) reads these.

    The paper's Table 1 setting is n_samples 200, k [1, 10, 100], temperature 0.8 (pass@1 at 0.2), top_p 0.95.
    `limit: null` evaluates every task; a number evaluates the first `limit` tasks and the report says so.
    """

    n_samples: int = Field(200, ge=1, description="completions sampled per task")
    k: list[int] = Field(default_factory=lambda: [1, 10, 100], min_length=1, description="pass@k reported")
    temperature: float = Field(0.8, ge=0.0, description="0 = greedy decoding")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1, description="sequences decoded together")
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="evaluate only the first `limit` tasks; null = all")
    workers: int = Field(2, ge=1, description="sandbox processes judging in parallel")
    timeout: float = Field(10.0, gt=0.0, description="wall-clock seconds per program in the sandbox")
    speculative_prompts: int = Field(
        8, ge=0, description="prompts decoded greedily and self-speculatively to measure acceptance; 0 = skip"
    )
    speculative_max_new_tokens: int = Field(128, ge=1)
    greedy: bool = Field(
        False,
        description="also decode every task once greedily and judge it: greedy pass@1 beside the sampled pass@k",
    )

    @model_validator(mode="after")
    def _check(self) -> EvaluationParams:
        if any(k < 1 for k in self.k):
            raise ValueError(f"k: every k must be >= 1, got {self.k}")
        too_big = [k for k in self.k if k > self.n_samples]
        if too_big:
            raise ValueError(f"k: pass@k needs k <= n_samples ({self.n_samples}); got {too_big}")
        if self.temperature == 0.0 and self.n_samples > 1:
            raise ValueError(
                f"temperature 0 decodes greedily, so the {self.n_samples} samples per task would be identical; "
                "set n_samples: 1 or a temperature > 0"
            )
        return self


class ExperimentReportParams(Section):
    """The side-by-side report of every evaluated model and the training runs behind them."""

    title: str = "WMTP experiment report"
    plot_dpi: int = Field(120, ge=50, le=600)
    samples_per_model: int = Field(
        2,
        ge=0,
        description="completions shown per model and task: the first sample of the first tasks; 0 = none",
    )
    sample_chars: int = Field(400, ge=1, description="characters of each shown completion; the rest is cut")
