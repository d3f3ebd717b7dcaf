"""MLflow tracking from rank 0 only, through `MlflowClient` (no fluent global run: the trainer also runs inside
Dagster processes), plus `flatten` for logging a nested config as params and `plot_loss_curves` for a PNG.

On every other rank, or with `enabled=False`, a `Tracker` does nothing and imports no MLflow.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
TRUNCATED = "...[truncated]"
STATUSES = ("FINISHED", "FAILED", "KILLED")
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))  # torchrun sets it before the process group exists


def sanitize_name(name: str) -> str:
    """A metric or param name MLflow accepts: letters, digits, `_ - . /` and spaces (`pass@1` -> `pass_at_1`)."""
    clean = _BAD_NAME_CHARS.sub("_", str(name).replace("@", "_at_"))
    clean = re.sub(r"/+", "/", clean).strip("/")
    if not clean or any(part in (".", "..") for part in clean.split("/")):
        raise ValueError(
            f"metric/param name {name!r}: nothing MLflow accepts is left after sanitizing ({clean!r})"
        )
    return clean


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_PARAM_VALUE:
        text = text[: MAX_PARAM_VALUE - len(TRUNCATED)] + TRUNCATED
    return text


def _is_server(uri: str) -> bool:
    # Only a tracking server chooses artifact locations; any store the client opens itself (sqlite, postgres,
    # a file path) defaults to ./mlruns.
    return uri.startswith(("http://", "https://", "databricks"))


def _artifact_uri(location: str | Path) -> str:
    text = str(location)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not re.match(r"^[A-Za-z]:\\", text):
        return text  # already a URI: s3://..., file:///..., mlflow-artifacts:/...
    return Path(text).absolute().as_uri()


class Tracker:
    """One MLflow run, written by rank 0. Use as a context manager to finish FAILED on an exception."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | Path | None,
        experiment: str,
        run_name: str,
        *,
        enabled: bool = True,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Create `experiment` (with `artifact_location`) if missing, then start a run, or resume `run_id`.

        `artifact_location` is required unless `tracking_uri` is a server (http/https): with a store the client
        opens itself (sqlite, a database, a path) MLflow would write artifacts into ./mlruns of whatever directory
        the process runs in. A server chooses itself when it is None (e.g. its `--artifacts-destination`).
        """
        self.enabled = enabled and _rank() == 0
        self._run_id: str | None = None
        self._params: dict[str, str] = {}
        self._finished = False
        if not self.enabled:
            return
        from mlflow import MlflowClient

        if artifact_location is None and not _is_server(tracking_uri):
            raise ValueError(
                f"Tracker({tracking_uri!r}): a local tracking store needs an explicit artifact_location "
                "(otherwise MLflow writes artifacts into ./mlruns of the current directory)"
            )
        if tracking_uri.startswith("sqlite:///"):
            # MLflow creates the database file but not its directory.
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        experiment_id = self._experiment_id(experiment, artifact_location)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        else:
            run = self._resume(run_id, experiment, experiment_id, tags)
        self._run_id = run.info.run_id
        self._params = dict(run.data.params)

    def _experiment_id(self, name: str, artifact_location: str | Path | None) -> str:
        wanted = None if artifact_location is None else _artifact_uri(artifact_location)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=wanted)
        if exp.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} ({self.tracking_uri}) is deleted: restore it or use another name"
            )
        if wanted is not None and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
            warnings.warn(
                f"MLflow experiment {name!r} already exists with artifact location {exp.artifact_location}; "
                f"its runs keep writing there, not to {wanted}",
                stacklevel=3,
            )
        return exp.experiment_id

    def _resume(self, run_id: str, experiment: str, experiment_id: str, tags: dict[str, str]):
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            raise ValueError(f"cannot resume MLflow run {run_id} at {self.tracking_uri}: {e.message}") from e
        if run.info.experiment_id != experiment_id:
            raise ValueError(
                f"MLflow run {run_id} belongs to experiment id {run.info.experiment_id}, not {experiment!r} "
                f"(id {experiment_id})"
            )
        self.client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        return run

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (to save in the checkpoint for resuming); None when disabled."""
        return self._run_id

    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log params (values stringified, long ones truncated). A key already logged must keep its value."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        new: dict[str, str] = {}
        for raw_key, raw_value in flat.items():
            key, value = sanitize_name(raw_key), _param_value(raw_value)
            old = self._params.get(key, new.get(key))
            if old is None:
                new[key] = value
            elif old != value:
                raise ValueError(
                    f"MLflow param {key!r} of run {self._run_id} is already {old[:200]!r}; cannot log "
                    f"{value[:200]!r} (params are immutable: a resumed run must keep its config)"
                )
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self._run_id, params=items[i : i + 100])
        self._params.update(new)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Log metrics at `step`; names are sanitized, None and NaN values are dropped."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch: dict[str, Metric] = {}
        for raw_key, raw_value in metrics.items():
            if raw_value is None:
                continue
            value = float(raw_value)
            if math.isnan(value):
                continue
            key = sanitize_name(raw_key)
            if key in batch:
                raise ValueError(f"metrics {raw_key!r} and another name both become {key!r} after sanitizing")
            batch[key] = Metric(key, value, now, int(step))
        items = list(batch.values())
        for i in range(0, len(items), 1000):
            self.client.log_batch(self._run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents (under `artifact_path`, default the directory's name)."""
        if not self.enabled:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._run_id, str(path), artifact_path or path.name)
        elif path.is_file():
            self.client.log_artifact(self._run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory to log as an MLflow artifact")

    def log_dict(self, obj: Any, name: str) -> None:
        """Write `obj` as the artifact `name` (.json, or .yaml/.yml)."""
        if self.enabled:
            self.client.log_dict(self._run_id, obj, name)

    def finish(self, status: str = "FINISHED") -> None:
        if status not in STATUSES:
            raise ValueError(f"finish(status={status!r}): expected one of {', '.join(STATUSES)}")
        if self.enabled and not self._finished:
            self.client.set_terminated(self._run_id, status)
            self._finished = True

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def flatten(cfg: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3} (with `sep` "."); lists and other values stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value
    return flat


def _natural(name: str) -> tuple:
    return (name == "total", [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])


def plot_loss_curves(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """A PNG of the training curves: every `loss/...` (solid) and `valid/loss/...` (dashed, the same colour per
    head) against step, log-scaled when all positive; `lr` in a small panel below when present."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [
            (float(row["step"]), float(row[key]))
            for row in history
            if row.get(key) is not None and not math.isnan(float(row[key]))
        ]
        return [s for s, _ in points], [v for _, v in points]

    keys = {k for row in history for k in row}
    heads = sorted(
        {k.removeprefix("valid/")[len("loss/") :] for k in keys if k.startswith(("loss/", "valid/loss/"))},
        key=_natural,  # head2 before head10; "total" after the heads
    )
    has_lr = "lr" in keys
    value_keys = [("value/loss", "-", "train value loss"), ("valid/value/sq_error", "--", "valid value MSE")]
    has_value = any(k in keys for k, _, _ in value_keys)

    # Panels, top to bottom: the heads' losses (absent for the critic), the value head's loss, the learning rate.
    ratios = [r for r, present in ((3, bool(heads)), (2, has_value), (1, has_lr)) if present] or [1]
    fig = Figure(figsize=(9, 2.2 + 1.5 * sum(ratios)), dpi=110, layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})))
    ax = axes.pop(0) if heads or not (has_value or has_lr) else None
    ax_value = axes.pop(0) if has_value else None
    ax_lr = axes.pop(0) if has_lr else None
    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    values: list[float] = []
    for i, head in enumerate(heads):
        colour = "black" if head == "total" else palette[i % len(palette)]
        for key, style, label in (
            (f"loss/{head}", "-", f"train {head}"),
            (f"valid/loss/{head}", "--", f"valid {head}"),
        ):
            steps, ys = series(key)
            if steps:
                ax.plot(steps, ys, style, color=colour, label=label, marker="o" if len(steps) == 1 else None)
                values += ys
    if ax is not None:
        if values and min(values) > 0:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2, 3, 4 rather than 2x10^0
            if max(values) / min(values) < 30:  # within about a decade the minor ticks are the only labels
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_ylabel("loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        if heads:
            ax.legend(fontsize="small", ncols=2)
    if ax_value is not None:
        for key, style, label in value_keys:
            steps, ys = series(key)
            if steps:
                ax_value.plot(steps, ys, style, color="tab:purple", label=label,
                              marker="o" if len(steps) == 1 else None)  # fmt: skip
        ax_value.set_ylabel("value loss (MSE)")
        ax_value.grid(True, alpha=0.3)
        ax_value.legend(fontsize="small")
    if ax_lr is not None:
        steps, lrs = series("lr")
        ax_lr.plot(steps, lrs, color="black")
        ax_lr.set_ylabel("lr")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.grid(True, alpha=0.3)
    fig.axes[0].set_title(title)
    fig.axes[-1].set_xlabel("step")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
