"""The process torchrun starts on every rank: `python -m wmtp_core.train.worker JOB_JSON`.

`@record` writes a Python exception's traceback to the error file torchrun names, so the launcher can say which
rank failed and why (a rank killed by a signal writes nothing; the launcher reads its exit code instead).
"""

from __future__ import annotations

import argparse

from torch.distributed.elastic.multiprocessing.errors import record

from wmtp_core.train.job import TrainJob
from wmtp_core.train.loop import train


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wmtp_core.train.worker",
        description="Train one recipe on this rank (started by torchrun; see `wmtp train --help`).",
    )
    parser.add_argument("job", help="job.json written by `wmtp train` or the training asset")
    args = parser.parse_args(argv)
    train(TrainJob.read(args.job))


if __name__ == "__main__":
    main()
