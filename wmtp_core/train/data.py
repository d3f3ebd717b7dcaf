"""Training and validation batches of one rank: sampled row ids, dealt by `RankSharder`, collated per micro-batch.

The stream is a pure function of (seed, epoch, position), so a resumed run asks for micro-batch `i` and gets
exactly the batch an uninterrupted run would have seen. Every rank gets the same number of micro-batches
(`drop_last`), because each one takes part in the same collectives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from wmtp_core.data.collate import Collator, RankSharder
from wmtp_core.data.index import read_index
from wmtp_core.data.params import Stage1Sampling, Stage2Sampling
from wmtp_core.data.sampling import read_rows, sample_stage1, sample_stage2

COLUMNS = ["row_id", "problem_id", "instruction", "input", "output", "is_correct"]


def sampled_rows(index_file: str | Path, stage: str, sampling: dict) -> tuple[str, np.ndarray]:
    """(split, row ids in training order) of the recipe's sampler."""
    if stage == "stage1":
        cfg = Stage1Sampling.model_validate(sampling)
        return cfg.split, sample_stage1(index_file, cfg)
    cfg2 = Stage2Sampling.model_validate(sampling)
    return cfg2.split, sample_stage2(index_file, cfg2)


def validation_rows(index_file: str | Path, *, correct_only: bool, limit: int | None) -> np.ndarray:
    """Row ids of the valid split (the first `limit`, correct rows only when the recipe trains on those)."""
    table = read_index(index_file, "valid")
    ids = table["row_id"].to_numpy()
    if correct_only:
        ids = ids[table["is_correct"].to_numpy(zero_copy_only=False)]
    return np.sort(ids)[:limit] if limit else np.sort(ids)


def collate(collator: Collator, rows: pa.Table) -> dict:
    """The collator's tensors plus each row's problem: names (validation pairs) and codes within the batch (the
    critic's pairwise loss compares rows of one problem)."""
    batch = collator(rows)
    names = [str(p) for p in rows.column("problem_id").to_pylist()]
    _, codes = np.unique(np.array(names, dtype=object), return_inverse=True)
    batch["problem_names"] = names
    batch["problem_ids"] = torch.as_tensor(codes.reshape(-1), dtype=torch.long)
    return batch


@dataclass
class RankStream:
    """The micro-batches of one rank, epoch after epoch, addressable by position."""

    parquet: Path
    row_ids: np.ndarray  # the stage's rows, in sampler order
    collator: Collator
    rank: int
    world_size: int
    batch_size: int
    seed: int
    shuffle: bool  # stage 1 reshuffles every epoch; stage 2 keeps its curriculum order

    def __post_init__(self) -> None:
        self.sharder = RankSharder(len(self.row_ids), self.rank, self.world_size, seed=self.seed,
                                   shuffle=self.shuffle, drop_last=True)  # fmt: skip
        if len(self.sharder) == 0:
            raise ValueError(
                f"{len(self.row_ids)} sampled rows cannot be shared by {self.world_size} ranks: raise the stage's "
                "n_samples or use fewer processes"
            )
        self._epoch_rows: tuple[int, pa.Table] | None = None

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.sharder) / self.batch_size)

    def rows_of_epoch(self, epoch: int) -> pa.Table:
        """This rank's rows of `epoch`, read once per epoch (only their row groups)."""
        if self._epoch_rows is None or self._epoch_rows[0] != epoch:
            self.sharder.set_epoch(epoch)
            ids = self.row_ids[self.sharder.indices()]
            self._epoch_rows = (epoch, read_rows([self.parquet], ids, columns=COLUMNS))
        return self._epoch_rows[1]

    def batch(self, position: int) -> dict:
        """Micro-batch number `position` counted from the start of training."""
        epoch, within = divmod(position, self.micro_batches_per_epoch)
        rows = self.rows_of_epoch(epoch)
        start = within * self.batch_size
        return collate(self.collator, rows.slice(start, self.batch_size))

    def batches(self, start: int, stop: int) -> Iterator[dict]:
        for position in range(start, stop):
            yield self.batch(position)


def validation_batches(parquet: Path, row_ids: np.ndarray, collator: Collator, rank: int, world_size: int,
                       batch_size: int) -> list[dict]:  # fmt: skip
    """This rank's share of the validation rows (possibly none: sums are all-reduced, so that is fine)."""
    mine = row_ids[rank::world_size]
    if len(mine) == 0:
        return []
    rows = read_rows([parquet], mine, columns=COLUMNS)
    return [collate(collator, rows.slice(i, batch_size)) for i in range(0, rows.num_rows, batch_size)]
