"""The whole training job: training set, models, evaluation, registration."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from features import LabelConfig, ModelNotFoundError, build_training_set, scan_log
from features.errors import DataError
from training._bundle import ModelBundle
from training._registry import CHAMPION, load_bundle, register
from training._store import Store
from training._train import TrainConfig, TrainResult, train_models

__all__ = ["TrainJob", "default_period", "run_training"]

logger = logging.getLogger(__name__)

WARM_UP_DAYS = 180


@dataclass(frozen=True, slots=True)
class TrainJob:
    events: Path | None
    train_set: Path | None
    labels: LabelConfig
    config: TrainConfig
    start: date | None = None
    end: date | None = None
    every_days: int = 30
    truth_dir: Path | None = None
    save_train_set: Path | None = None
    register: bool = True


def default_period(log: pl.LazyFrame, labels: LabelConfig) -> tuple[date, date]:
    """From 180 days after the history begins to one horizon before the last event.

    The history begins when 1% of the events have occurred: back-dated records (an
    account opened years ago) do not count as history.
    """
    bounds = log.select(
        pl.col("occurred_at").quantile(0.01, interpolation="lower").alias("first"),
        pl.col("occurred_at").max().alias("last"),
    ).collect()
    first, last = bounds["first"][0], bounds["last"][0]
    if first is None:
        raise DataError("the event log holds no events")
    start = (first + timedelta(days=WARM_UP_DAYS)).date()
    end = (last - timedelta(days=labels.horizon_days)).date()
    if end < start:
        raise DataError(
            f"the data ({first.date()} .. {last.date()}) are too short for a "
            f"{labels.horizon_days}-day horizon after a {WARM_UP_DAYS}-day warm-up"
        )
    return start, end


def _truth_dir(events: Path | None, given: Path | None) -> Path | None:
    if given is not None:
        return given
    if events is None:
        return None
    guess = events.parent / (events.name.removesuffix(".parquet") + ".truth")
    return guess if guess.is_dir() else None


def run_training(
    job: TrainJob,
    store: Store,
    *,
    now: datetime,
    code_version: str,
    say: Callable[[str], None] = print,
    chunk_progress: Callable[[int, int], None] | None = None,
) -> tuple[TrainResult, str | None]:
    """Train, evaluate, and (unless ``job.register`` is off) register a challenger.

    Returns the result and the new version (None when not registered).
    """
    log = scan_log(job.events) if job.events is not None else None
    if job.train_set is not None:
        if not job.train_set.exists():
            raise DataError(f"no training set at {job.train_set}")
        frame = pl.read_parquet(job.train_set)
        say(f"training set: {job.train_set} ({frame.height:,} rows)")
    elif log is not None:
        start, end = job.start, job.end
        if start is None or end is None:
            d_start, d_end = default_period(log, job.labels)
            start, end = start or d_start, end or d_end
        say(f"building the training set ({start} .. {end}, every {job.every_days} days) ...")
        ts = build_training_set(
            log, start, end, job.every_days, job.labels, progress=chunk_progress
        )
        frame = ts.frame
        say(ts.format())
        if job.save_train_set is not None:
            job.save_train_set.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(job.save_train_set)
    else:
        raise DataError("give --events (an event log) or --train-set (a built training set)")
    champion: ModelBundle | None = None
    if job.register:
        try:
            champion, version = load_bundle(store, CHAMPION)
            say(f"previous champion: version {version}")
        except ModelNotFoundError:
            say("no champion yet")
    result = train_models(
        frame,
        job.labels,
        job.config,
        events=log,
        truth_dir=_truth_dir(job.events, job.truth_dir),
        champion=champion,
        code_version=code_version,
        now=now.astimezone(UTC),
        progress=say,
    )
    say(result.evaluation.table())
    say(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
        + f"; best rounds: churn {result.best_rounds['churn']}, "
        f"value {result.best_rounds['value']}"
    )
    if not job.register:
        return result, None
    version, run_id = register(store, result, progress=say)
    say(f"registered {store.model_name} version {version} (alias challenger), run {run_id}")
    return result, version
