"""Choose training rows via the index and materialize them, against the JSONL approach, in the same run.

A synthetic CodeContests-shaped table (one row per solution, descriptions repeated for every solution of their
problem, text lengths drawn around CodeContests' medians) is written twice: as `codecontests_processed` Parquet +
`codecontests_index`, and as JSONL + a JSON metadata file. Each approach then runs in its own subprocess (so its
peak RSS is its own): choose `--select` rows, half correct and half incorrect, and materialize them in memory.
By default both hold the chosen rows in file order: a trainer takes its order batch by batch through positions
(`RankSharder`, then `table.take`), so it never needs a second, reordered copy; `--order training` asks both for
the rows in the sampled order instead.

    python benchmarks/select_rows.py --rows 500000          # the issue's size: 50,000 of 500,000 rows
    python benchmarks/select_rows.py                         # default: 20,000 of 200,000 rows, about a minute

Each process first loads what its approach uses (setup: imports and, for Parquet, Arrow's compute kernels, which
register on first use); seconds count the work after that. The JSONL baseline parses only the chosen lines (its
fastest form); the common loader that parses every line is measured once more for context. With `--repeats N`
each figure is the lowest of N runs. Last line: JSON with rows, selected, speedup_vs_jsonl and
peak_mem_ratio_vs_jsonl (peak RSS of the whole process) against the fast baseline, work_mem_ratio_vs_jsonl (peak
RSS above the RSS after setup), speedup_vs_jsonl_parse_every_line, and the raw figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Median characters per field, roughly CodeContests' (Codeforces statements are long; Python solutions short).
DESCRIPTION_CHARS, EXAMPLES_CHARS, SOLUTION_CHARS = 1800, 160, 700
ROW_GROUP_SIZE = 4096  # as `codecontests_processed.row_group_size` defaults
WORDS = ("for in range if else return print input int split map def while len sum append list str and or not "
         "import sys n m k a b x y i j dp ans res = + - * // % ( ) [ ] : , 0 1 2 10 100").split()  # fmt: skip


def _text_pool(rng, n_chars: int) -> str:
    words = rng.choice(WORDS, size=n_chars // 3)
    seps = rng.choice([" ", " ", " ", "\n", "\n    "], size=len(words))
    return "".join(w + s for w, s in zip(words.tolist(), seps.tolist(), strict=True))


def generate(workdir: Path, n_rows: int, seed: int, compression: str) -> None:
    import numpy as np
    import pyarrow as pa
    from tqdm import tqdm

    from wmtp_core.data.index import build_index
    from wmtp_core.data.prepare import PROCESSED_SCHEMA, open_processed_writer

    rng = np.random.default_rng(seed)
    pool = _text_pool(rng, 64 << 20)
    writer = open_processed_writer(workdir / "train.parquet", compression)
    pending: list[pa.Table] = []
    meta = []
    row = 0
    problem = 0
    bar = tqdm(total=n_rows, desc="synthetic rows", unit="row")
    with open(workdir / "train.jsonl", "w") as jsonl:
        while row < n_rows:
            n = int(min(n_rows - row, rng.integers(20, 400)))
            desc_len = int(rng.lognormal(np.log(DESCRIPTION_CHARS), 0.5))
            start = int(rng.integers(0, len(pool) - desc_len))
            description = pool[start : start + desc_len]
            examples = pool[start : start + int(rng.lognormal(np.log(EXAMPLES_CHARS), 0.5))]
            lengths = rng.lognormal(np.log(SOLUTION_CHARS), 0.7, n).astype(int).clip(20, 20_000)
            starts = rng.integers(0, len(pool) - 20_000, n)
            correct = rng.random(n) < 0.4
            difficulty = int(rng.choice([1, 2, 7, 8, 9, 10, 11, 12]))
            cols = {
                "row_id": list(range(row, row + n)),
                "task_id": [
                    f"{problem}_{'correct' if c else 'incorrect'}_{i}" for i, c in enumerate(correct)
                ],
                "problem_id": [f"{problem}_A. Problem {problem}"] * n,
                "is_correct": correct.tolist(),
                "instruction": [description] * n,
                "input": [examples] * n,
                "output": [pool[s : s + ln] for s, ln in zip(starts.tolist(), lengths.tolist(), strict=True)],
                "language": [3] * n,
                "difficulty": [difficulty] * n,
                "source": [2] * n,
                "cf_rating": [800 + 100 * (difficulty % 10)] * n,
                "n_tokens": (lengths // 3 + desc_len // 4 + 30).clip(0, 2048).tolist(),
            }
            pending.append(pa.table(cols, schema=PROCESSED_SCHEMA))
            held = sum(t.num_rows for t in pending)
            if held >= ROW_GROUP_SIZE or row + n >= n_rows:  # full row groups, as `codecontests_processed` writes
                table = pa.concat_tables(pending)
                full = held if row + n >= n_rows else held - held % ROW_GROUP_SIZE
                writer.write_table(table.slice(0, full), row_group_size=ROW_GROUP_SIZE)
                pending = [table.slice(full)] if full < held else []
            for i in range(n):
                record = {k: v[i] for k, v in cols.items()}
                jsonl.write(json.dumps(record) + "\n")
                meta.append(
                    {k: record[k] for k in ("row_id", "problem_id", "is_correct", "difficulty", "n_tokens")}
                )
            row += n
            problem += 1
            bar.update(n)
    bar.close()
    writer.close()
    (workdir / "metadata.json").write_text(json.dumps(meta))
    build_index(workdir, workdir / "index.parquet", splits=("train",))


def setup_parquet() -> None:
    """Load what the Parquet approach uses: the libraries, and Arrow's compute kernels (registered on first use)."""
    import numpy  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute as pc

    import wmtp_core.data.index  # noqa: F401
    import wmtp_core.data.params  # noqa: F401
    import wmtp_core.data.sampling  # noqa: F401

    pc.equal(pa.array([1]), 1)


def run_parquet(workdir: Path, n_select: int, seed: int, threads: int | None = None, order: str = "file") -> dict:
    import numpy as np
    import pyarrow.compute as pc

    from wmtp_core.data.params import Stage1Sampling
    from wmtp_core.data.sampling import read_rows, sample_stage1

    t0 = time.perf_counter()
    cfg = Stage1Sampling(
        n_samples=n_select, correct_ratio=0.5, difficulty_range=(0, 28), match_length=False, seed=seed
    )
    ids = sample_stage1(workdir / "index.parquet", cfg)  # reads the split's index columns, a row group at a time
    if order == "file":
        ids = np.sort(ids)
    rows = read_rows([workdir / "train.parquet"], ids, threads=threads)
    # The materialized rows are the Arrow table; check them without copying them into Python objects.
    assert np.array_equal(rows["row_id"].to_numpy(), ids)
    chars = pc.sum(pc.utf8_length(rows["output"])).as_py()
    return {"seconds": time.perf_counter() - t0, "rows": rows.num_rows, "output_chars": chars}


def setup_jsonl() -> None:
    import json  # noqa: F401
    import random  # noqa: F401


def run_jsonl(workdir: Path, n_select: int, seed: int, parse_every_line: bool = False, order: str = "file") -> dict:
    """The baseline: choose from the JSON metadata, then one pass over every line of the JSONL file.

    By default only the chosen lines are parsed (the fastest form of the approach); `parse_every_line` is the
    common loader that decodes and parses each line and keeps the chosen ones.
    """
    import random

    t0 = time.perf_counter()
    meta = json.loads((workdir / "metadata.json").read_text())
    correct = [m["row_id"] for m in meta if m["is_correct"]]
    incorrect = [m["row_id"] for m in meta if not m["is_correct"]]
    rng = random.Random(seed)
    ids = rng.sample(correct, n_select // 2) + rng.sample(incorrect, n_select - n_select // 2)
    rng.shuffle(ids)
    if order == "file":
        ids.sort()
    wanted = set(ids)
    by_id = {}
    if parse_every_line:
        with open(workdir / "train.jsonl", encoding="utf-8") as f:
            for text in f:
                record = json.loads(text)
                if record["row_id"] in wanted:
                    by_id[record["row_id"]] = record
    else:
        with open(workdir / "train.jsonl", "rb") as f:
            for line_no, line in enumerate(f):
                if line_no in wanted:
                    by_id[line_no] = json.loads(line)
    rows = [by_id[i] for i in ids]
    assert [r["row_id"] for r in rows] == ids
    chars = sum(len(r["output"]) for r in rows)
    return {"seconds": time.perf_counter() - t0, "rows": len(rows), "output_chars": chars}


def rss_mb(field: str) -> float:
    # VmHWM (peak) belongs to this process image; ru_maxrss would carry the parent's peak across fork + exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def child(approach: str, workdir: Path, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    (setup_parquet if approach == "parquet" else setup_jsonl)()
    setup = {"setup_seconds": time.perf_counter() - t0, "setup_rss_mb": rss_mb("VmRSS")}
    if approach == "parquet":
        result = run_parquet(workdir, args.select, args.seed, args.threads, args.order)
    else:
        result = run_jsonl(workdir, args.select, args.seed, approach == "jsonl_parse_every_line", args.order)
    result.update(setup, peak_rss_mb=rss_mb("VmHWM"))
    result["work_peak_mb"] = result["peak_rss_mb"] - result["setup_rss_mb"]
    print(json.dumps(result))


def measure(approach: str, workdir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", approach, "--workdir", str(workdir), "--select", str(args.select),
           "--seed", str(args.seed), "--order", args.order] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=200_000, help="rows of the synthetic table (issue: 500000)"
    )
    parser.add_argument(
        "--select", type=int, default=None, help="rows chosen and materialized (default rows/10)"
    )
    parser.add_argument(
        "--compression", default="lz4", help="Parquet codec, as codecontests_processed.compression"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs per approach; the lowest of each figure counts")
    parser.add_argument("--threads", type=int, default=None, help="read_rows threads (default: its own)")
    parser.add_argument(
        "--order", choices=["file", "training"], default="file",
        help="materialize the chosen rows in file order (default: a trainer applies its order per batch, through "
        "positions) or in the sampled order",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the generated files here (reused if present)"
    )
    parser.add_argument("--child", choices=["parquet", "jsonl", "jsonl_parse_every_line"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.select is None:
        args.select = args.rows // 10
    if args.child:
        child(args.child, args.workdir, args)
        return
    if args.select > args.rows // 2:
        parser.error(
            f"--select {args.select} needs --rows of at least {2 * args.select} (half correct, half not)"
        )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="select_rows_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        stamp = workdir / f"generated-v3-{args.rows}-{args.seed}-{args.compression}"
        if not stamp.exists():
            for old in workdir.glob("generated-*"):
                old.unlink()
            generate(workdir, args.rows, args.seed, args.compression)
            stamp.touch()
        sizes = {
            p.name: p.stat().st_size for p in workdir.iterdir() if p.suffix in (".parquet", ".json", ".jsonl")
        }
        print("files (MB):", {k: round(v / 2**20, 1) for k, v in sorted(sizes.items())}, file=sys.stderr)
        results = {}
        for approach in ("jsonl", "parquet", "jsonl_parse_every_line"):
            repeats = 1 if approach == "jsonl_parse_every_line" else args.repeats  # slow, and only for context
            runs = [measure(approach, workdir, args) for _ in range(repeats)]
            results[approach] = {k: min(r[k] for r in runs) if isinstance(v, float) else v for k, v in runs[0].items()}
            print(approach, results[approach], file=sys.stderr)
        pq_, js, naive = results["parquet"], results["jsonl"], results["jsonl_parse_every_line"]
        assert pq_["rows"] == js["rows"] == args.select
        print(json.dumps({
            "rows": args.rows,
            "selected": args.select,
            "order": args.order,
            "speedup_vs_jsonl": round(js["seconds"] / pq_["seconds"], 2),
            "peak_mem_ratio_vs_jsonl": round(pq_["peak_rss_mb"] / js["peak_rss_mb"], 3),
            "work_mem_ratio_vs_jsonl": round(pq_["work_peak_mb"] / js["work_peak_mb"], 3),
            "speedup_vs_jsonl_parse_every_line": round(naive["seconds"] / pq_["seconds"], 2),
            "parquet": pq_,
            "jsonl": js,
            "jsonl_parse_every_line": naive,
            "bytes": sizes,
        }))  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
