"""Batches for training: prompt template, response + EOS, labels masked on prompt and padding; rank sharding.

Labels are aligned with `input_ids` (not shifted): `labels[b, t]` is the token at position t when it belongs to
the response, else -100. The loss shifts by k for head k.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from wmtp_core.data.prompts import encode_example

IGNORE_INDEX = -100


class Collator:
    """Turns rows (dicts or a pyarrow table with instruction, input, output, is_correct, row_id) into tensors."""

    def __init__(self, tokenizer, *, max_tokens: int | None = None, pad_id: int | None = None):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # Llama-2 has no pad piece (pad_id -1); padded positions are masked, so any valid id does.
        self.pad_id = pad_id if pad_id is not None else tokenizer.eos_id

    def __call__(self, rows: Sequence[Mapping[str, Any]] | pa.Table) -> dict[str, torch.Tensor]:
        if isinstance(rows, pa.Table):
            rows = rows.to_pylist()
        if not rows:
            raise ValueError("collate: empty batch")
        sequences, prompt_lengths = [], []
        for n, row in enumerate(rows):
            missing = [k for k in ("instruction", "input", "output", "is_correct", "row_id") if k not in row]
            if missing:
                raise KeyError(f"collate: batch row {n} (row_id {row.get('row_id')}) lacks {missing}")
            prompt, response = encode_example(self.tokenizer, row["instruction"], row["input"], row["output"])
            ids = prompt + response
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                raise ValueError(
                    f"collate: row_id {row['row_id']} has {len(ids)} tokens, above max_tokens={self.max_tokens} "
                    "(preparation drops such rows; the stage's max_tokens is smaller than the data's)"
                )
            sequences.append(ids)
            prompt_lengths.append(len(prompt))
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            tokens = torch.tensor(ids, dtype=torch.long)
            input_ids[b, : len(ids)] = tokens
            labels[b, n_prompt : len(ids)] = tokens[n_prompt:]
            attention_mask[b, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "reward": torch.tensor([float(r["is_correct"]) for r in rows], dtype=torch.float32),
            "row_ids": torch.tensor([int(r["row_id"]) for r in rows], dtype=torch.long),
        }


class RankSharder(torch.utils.data.Sampler[int]):
    """Positions 0..num_rows-1 for one rank, like DistributedSampler but with no padding duplicates.

    Every epoch permutes all positions with `seed + epoch` (the same permutation on every rank) and deals them
    round-robin, so ranks never overlap and together cover every row. Rank sizes then differ by at most one;
    `drop_last` trims the tail instead so every rank has the same count. `shuffle=False` keeps the given order
    (a stage-2 curriculum).
    """

    def __init__(self, num_rows: int, rank: int, world_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):  # fmt: skip
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"RankSharder: rank {rank} outside 0..{world_size - 1} (world_size {world_size})")
        self.num_rows, self.rank, self.world_size = num_rows, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        order = (np.random.default_rng(self.seed + self.epoch).permutation(self.num_rows) if self.shuffle
                 else np.arange(self.num_rows))  # fmt: skip
        if self.drop_last:
            order = order[: self.num_rows - self.num_rows % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.world_size
        return len(range(self.rank, self.num_rows, self.world_size))
