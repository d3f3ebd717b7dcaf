"""`wmtp` commands of wmtp_core.data."""

from __future__ import annotations

import json

import click


@click.command("prepare-codecontests", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--tokenizer", "tokenizer_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer that counts n_tokens (Llama-2's tokenizer.model, a .gguf, a stored tokenizer.json).")  # fmt: skip
@click.option("--max-tokens", default=2048, show_default=True, help="Drop rows longer than this (counted in stats).")
@click.option("--max-public-tests", default=2, show_default=True, help="Public tests shown in the prompt.")
@click.option("--row-group-size", default=4096, show_default=True, help="Parquet row group size.")
@click.option("--compression", default="lz4", show_default=True,
              type=click.Choice(["lz4", "zstd", "snappy", "none"]), help="Parquet codec of the split files.")  # fmt: skip
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def prepare_codecontests_command(source_dir: str, out_dir: str, tokenizer_file: str, max_tokens: int,
                                 max_public_tests: int, row_group_size: int, compression: str, no_progress: bool) -> None:  # fmt: skip
    """Process published CodeContests Parquet files in SOURCE_DIR into OUT_DIR.

    SOURCE_DIR holds the hub's files ({train,valid,test}-NNNNN-of-NNNNN.parquet, directly or under data/).
    OUT_DIR receives {split}.parquet (one row per Python solution), index.parquet, schema.json, stats.json,
    n_tokens_hist.png and MANIFEST.json; it is replaced atomically, so a failed run leaves no partial output.
    """
    from wmtp_core.data.codecontests import CodeContestsError
    from wmtp_core.data.prepare import prepare_codecontests
    from wmtp_core.tokenizer import Tokenizer, TokenizerError

    try:
        tokenizer = Tokenizer(tokenizer_file)
        stats = prepare_codecontests(source_dir, out_dir, tokenizer, max_tokens=max_tokens,
                                     max_public_tests=max_public_tests, row_group_size=row_group_size, compression=compression,
                                     progress=not no_progress)  # fmt: skip
    except (CodeContestsError, TokenizerError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps({"out_dir": out_dir, **stats["total"]}))


@click.command("check-labels", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Check only the first LIMIT problems (default: every problem).")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Wall-clock seconds per program run.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Programs run in parallel (default: CPUs).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def check_labels_command(source_dir: str, limit: int | None, timeout: float, workers: int | None,
                         no_progress: bool) -> None:  # fmt: skip
    """Run every Python solution of the CodeContests Parquet files in SOURCE_DIR on its tests, in the sandbox.

    Prints each solution whose outcome contradicts its label (a correct one failing a test, an incorrect one
    passing them all), then a JSON summary; exits 1 when any label disagrees.
    """
    from wmtp_core.data.codecontests import read_problems
    from wmtp_core.data.labels import check_labels

    table = read_problems(source_dir, limit)
    found = check_labels(table, timeout_s=timeout, workers=workers, progress=not no_progress)
    for disagreement in found:
        click.echo(str(disagreement))
    click.echo(json.dumps({"source_dir": source_dir, "problems": table.num_rows, "limit": limit,
                           "disagreements": len(found)}))  # fmt: skip
    if found:
        raise SystemExit(1)


@click.command("train-tokenizer", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_file", type=click.Path(dir_okay=False))
@click.option("--vocab-size", default=1024, show_default=True, type=click.IntRange(min=260),
              help="Pieces: 256 bytes + specials + BPE merges.")  # fmt: skip
def train_tokenizer_command(source_dir: str, out_file: str, vocab_size: int) -> None:
    """Train a byte-fallback BPE SentencePiece model on the CodeContests Parquet files in SOURCE_DIR.

    The corpus is every description and every solution (correct and incorrect) of every split, as the
    `tokenizer` asset trains it when params.yaml names no tokenizer file. Writes OUT_FILE (a .model file).
    """
    from wmtp_core.data.codecontests import CodeContestsError, tokenizer_corpus
    from wmtp_core.tokenizer import Tokenizer, TokenizerError, train_tokenizer

    try:
        texts = tokenizer_corpus(source_dir)
        train_tokenizer(texts, out_file, vocab_size)
        tok = Tokenizer(out_file)
    except (CodeContestsError, TokenizerError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps({"out_file": out_file, "vocab_size": tok.vocab_size, "training_texts": len(texts),
                           "sha256": tok.sha256}))  # fmt: skip


@click.command("check-processed", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("processed_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--max-tokens", default=2048, show_default=True, help="The length limit the rows were cut at.")
@click.option("--index", "index_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Index file to compare with the split files (default: PROCESSED_DIR/index.parquet if present).")  # fmt: skip
def check_processed_command(processed_dir: str, max_tokens: int, index_file: str | None) -> None:
    """Validate processed CodeContests split files (and their index); print each problem, exit 1 if any."""
    from pathlib import Path

    from wmtp_core.data.index import INDEX_FILE, index_disagreements
    from wmtp_core.data.prepare import validate_processed

    problems = validate_processed(processed_dir, max_tokens)
    index_path = Path(index_file) if index_file else Path(processed_dir) / INDEX_FILE
    if index_path.is_file():
        problems += index_disagreements(processed_dir, index_path)
    for problem in problems:
        click.echo(problem)
    click.echo(json.dumps({"processed_dir": processed_dir, "problems": len(problems)}))
    if problems:
        raise SystemExit(1)


commands: list[click.Command] = [
    prepare_codecontests_command,
    check_labels_command,
    train_tokenizer_command,
    check_processed_command,
]
