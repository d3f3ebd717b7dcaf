"""params.yaml sections of the model assets (fields of `wmtp_core.config.Params`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from wmtp_core.section import ProjectPath, Section


class BaseModelParams(Section):
    """The policy everything is fine-tuned from: the micro multi-token policy, Meta's weights converted, or a GGUF
    Llama imported with extra heads."""

    source: Literal["micro", "meta", "gguf"] = "micro"
    meta_dir: ProjectPath | None = Field(
        None, description="with source: meta, the directory of consolidated.pth + params.json"
    )
    gguf_file: ProjectPath | None = Field(None, description="with source: gguf, a GGUF Llama file")
    n_future: int = Field(
        4,
        ge=1,
        description="with source: gguf, heads of the imported policy (heads 2.. start as copies of head 1)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        "bfloat16",
        description="weights dtype of a conversion; null keeps the stored one (micro models are float32, "
        "GGUF imports float32: quantized weights have no stored float dtype)",
    )
    seed: int = Field(0, description="initialisation seed of the micro policy")

    @model_validator(mode="after")
    def _dir_for_meta(self) -> BaseModelParams:
        if self.source == "meta" and not self.meta_dir:
            raise ValueError(
                "base_model.source is 'meta', so base_model.meta_dir must name the weights directory"
            )
        return self

    @model_validator(mode="after")
    def _file_for_gguf(self) -> BaseModelParams:
        if self.source == "gguf" and not self.gguf_file:
            raise ValueError("base_model.source is 'gguf', so base_model.gguf_file must name the GGUF file")
        return self


class ReferenceModelParams(Section):
    """The next-token reference model of Rho-1: the micro reference, or a Hugging Face or GGUF Llama imported."""

    source: Literal["micro", "hf", "gguf"] = "micro"
    hf_dir: ProjectPath | None = Field(
        None, description="with source: hf, a local Hugging Face Llama checkpoint directory"
    )
    gguf_file: ProjectPath | None = Field(None, description="with source: gguf, a GGUF Llama file (one head)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        "bfloat16",
        description="weights dtype of the import; null keeps the stored one (micro models are float32, "
        "GGUF imports float32)",
    )
    seed: int = Field(1, description="initialisation seed of the micro reference")

    @model_validator(mode="after")
    def _dir_for_hf(self) -> ReferenceModelParams:
        if self.source == "hf" and not self.hf_dir:
            raise ValueError(
                "reference_model.source is 'hf', so reference_model.hf_dir must name the checkpoint"
            )
        return self

    @model_validator(mode="after")
    def _file_for_gguf(self) -> ReferenceModelParams:
        if self.source == "gguf" and not self.gguf_file:
            raise ValueError(
                "reference_model.source is 'gguf', so reference_model.gguf_file must name the GGUF file"
            )
        return self
