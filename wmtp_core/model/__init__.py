"""Meta-compatible multi-token-prediction LLaMA: model, value head, safetensors IO, converters, micro models."""

from wmtp_core.model.args import ModelArgs, ModelArgsError, preset_7b_1t_4
from wmtp_core.model.convert import convert_meta, export_hf, import_hf
from wmtp_core.model.io import (
    load,
    load_value_head,
    read_args,
    read_metadata,
    save,
    save_state_dict,
)
from wmtp_core.model.micro import make_micro, micro_args
from wmtp_core.model.safetensors_file import CheckpointError
from wmtp_core.model.transformer import KVCache, Transformer, TransformerBlock
from wmtp_core.model.value_head import ValueHead

__all__ = [
    "CheckpointError",
    "KVCache",
    "ModelArgs",
    "ModelArgsError",
    "Transformer",
    "TransformerBlock",
    "ValueHead",
    "convert_meta",
    "export_hf",
    "import_hf",
    "load",
    "load_value_head",
    "make_micro",
    "micro_args",
    "preset_7b_1t_4",
    "read_args",
    "read_metadata",
    "save",
    "save_state_dict",
]
