"""Training both models from a point-in-time training set, with baselines.

Deterministic: the same training set, config and seed give byte-identical model
files (LightGBM ``deterministic``, ``force_col_wise``, fixed threads and seeds).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import polars as pl

from features import (
    FEATURES,
    LabelConfig,
    clean_log,
    feature_fingerprint,
    offline_features,
    trailing_value,
)
from features.errors import ConfigError, DataError
from training._bundle import Calibrator, ModelBundle, reference_distributions
from training._metrics import classification_metrics, regression_metrics, roc_auc
from training._split import ChurnSplit, ValueSplit, churn_split, value_split

__all__ = ["Evaluation", "TrainConfig", "TrainResult", "data_fingerprint", "train_models"]

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float64]
FEATURE_NAMES = tuple(f.name for f in FEATURES)
RULES = ("days_since_activity", "days_since_salary")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """LightGBM settings shared by both models (the value model has its own objective)."""

    seed: int = 7
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 1500
    early_stopping: int = 50
    threads: int = 2
    valid_snapshots: int = 2
    value_objective: Literal["tweedie", "huber"] = "tweedie"

    def __post_init__(self) -> None:
        if self.value_objective not in ("tweedie", "huber"):
            raise ConfigError("value_objective", self.value_objective, "one of: tweedie, huber")
        if not 0 < self.learning_rate <= 1:
            raise ConfigError("learning_rate", self.learning_rate, "0 < rate <= 1")
        if self.max_rounds < 1 or self.threads < 1 or self.valid_snapshots < 1:
            raise ConfigError("max_rounds/threads/valid_snapshots", None, "whole numbers >= 1")

    def lgb_params(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.threads,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Test-period figures: the model's, and each baseline's."""

    churn: dict[str, float]
    value: dict[str, float]
    churn_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    value_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def metrics(self) -> dict[str, float]:
        """Flat names for MLflow: ``test.churn.roc_auc``, ``test.rule.roc_auc``, ..."""
        out = {f"test.churn.{k}": v for k, v in self.churn.items()}
        out |= {f"test.value.{k}": v for k, v in self.value.items()}
        for name, m in self.churn_baselines.items():
            out |= {f"test.{name}.{k}": v for k, v in m.items()}
        for name, m in self.value_baselines.items():
            out |= {f"test.value_{name}.{k}": v for k, v in m.items()}
        oracle = self.churn_baselines.get("oracle")
        if oracle and oracle["roc_auc"] > 0:
            out["test.churn.auc_over_oracle"] = self.churn["roc_auc"] / oracle["roc_auc"]
        return out

    def table(self) -> str:
        """The comparison as a printable table."""
        rows = [("churn model", self.churn), *list(self.churn_baselines.items())]
        head = f"{'churn (test)':<22}{'ROC-AUC':>9}{'PR-AUC':>9}{'Brier':>9}{'logloss':>9}"
        head += f"{'ECE':>8}{'lift@10%':>10}{'capt@10%':>10}"
        lines = [head]
        for name, m in rows:
            lines.append(
                f"{name:<22}{m['roc_auc']:>9.4f}{m.get('pr_auc', math.nan):>9.4f}"
                f"{m.get('brier', math.nan):>9.4f}{m.get('log_loss', math.nan):>9.4f}"
                f"{m.get('ece', math.nan):>8.4f}{m.get('lift_top10', math.nan):>10.2f}"
                f"{m.get('capture_top10', math.nan):>10.2%}"
            )
        lines.append("")
        lines.append(f"{'value (test)':<22}{'MAE':>14}{'RMSE':>14}{'Spearman':>10}")
        for name, m in [("value model", self.value), *self.value_baselines.items()]:
            lines.append(
                f"{name:<22}{m['mae'] / 100:>14,.2f}{m['rmse'] / 100:>14,.2f}{m['spearman']:>10.4f}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TrainResult:
    bundle: ModelBundle
    evaluation: Evaluation
    split: ChurnSplit
    value_split: ValueSplit
    params: dict[str, Any]
    tags: dict[str, str]
    test_frame: pl.DataFrame  # churn test rows with both scores, for reports and promotion
    value_test: pl.DataFrame
    seconds: dict[str, float]
    best_rounds: dict[str, int]


def data_fingerprint(frame: pl.DataFrame) -> str:
    """A digest of the training rows (order-independent, polars row hashes)."""
    hashed = frame.sort("customer_id", "as_of").hash_rows(seed=0)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def _matrix(frame: pl.DataFrame) -> Array:
    return frame.select(FEATURE_NAMES).to_numpy().astype(np.float64, copy=False)


def check_training_set(frame: pl.DataFrame) -> None:
    needed = ("customer_id", "as_of", "churn", "value_minor", *FEATURE_NAMES)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"the training set lacks {len(missing)} columns ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): it was built with other feature "
            f"definitions; rebuild it (current definitions {feature_fingerprint()})"
        )
    if frame.height == 0:
        raise DataError("the training set is empty")


def _fit(
    params: Mapping[str, Any],
    x: Array,
    y: Array,
    xv: Array,
    yv: Array,
    cfg: TrainConfig,
) -> tuple[lgb.Booster, int]:
    train = lgb.Dataset(x, y, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    valid = lgb.Dataset(xv, yv, reference=train)
    booster = lgb.train(
        dict(params),
        train,
        num_boost_round=cfg.max_rounds,
        valid_sets=[valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    # keep only the trees up to the best iteration, so the saved file is what predicts
    model = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return model, best


REFERENCE_DAYS = 30
REFERENCE_SAMPLE = 20_000


def event_time_columns(
    events: pl.LazyFrame,
    until: datetime,
    bundle: ModelBundle,
    *,
    days: int = REFERENCE_DAYS,
    sample: int = REFERENCE_SAMPLE,
    seed: int = 7,
) -> dict[str, npt.NDArray[np.float64]] | None:
    """Features and both scores as the live scorer sees them: at customers' events.

    The worker scores a customer at its newest event, so the population it watches
    for drift is "customers at their events", not the month-end snapshots of the
    training set (at an event, days since the last activity is 0; at a snapshot it
    is anything). This takes the events of the ``days`` before ``until``, one per
    customer and hour (a micro-batch scores a busy customer once), a sample of at
    most ``sample`` of them, and computes their features offline and their scores.
    """
    log = clean_log(events)
    start = until - timedelta(days=days)
    pairs = (
        log.filter((pl.col("occurred_at") > start) & (pl.col("occurred_at") <= until))
        .select(
            "customer_id",
            pl.col("occurred_at")
            .dt.convert_time_zone("UTC")
            .dt.cast_time_unit("us")
            .alias("as_of"),
        )
        .group_by("customer_id", pl.col("as_of").dt.truncate("1h").alias("hour"))
        .agg(pl.col("as_of").max())
        .select("customer_id", "as_of")
        .sort("customer_id", "as_of")
        .collect()
    )
    if pairs.height < 100:
        return None
    if pairs.height > sample:
        pairs = pairs.sample(n=sample, seed=seed).sort("customer_id", "as_of")
    feats = offline_features(log, pairs, cleaned=True)
    columns = {name: feats[name].to_numpy().astype(np.float64) for name in FEATURE_NAMES}
    x = np.column_stack([columns[name] for name in bundle.features])
    columns["churn_probability"], columns["predicted_value_minor"] = bundle.predict(x)
    return columns


def train_models(
    frame: pl.DataFrame,
    labels: LabelConfig,
    cfg: TrainConfig | None = None,
    *,
    events: pl.LazyFrame | None = None,
    truth_dir: Path | None = None,
    champion: ModelBundle | None = None,
    code_version: str = "unknown",
    now: datetime,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Split, train, calibrate and evaluate both models; nothing is written anywhere."""
    cfg = cfg or TrainConfig()
    say = progress or (lambda _msg: None)
    check_training_set(frame)
    seconds: dict[str, float] = {}
    split = churn_split(frame, labels.horizon_days, cfg.valid_snapshots)
    for name, part in (("train", split.train), ("validation", split.valid), ("test", split.test)):
        positives = int(part["churn"].sum())
        if positives == 0:
            raise DataError(
                f"no positive labels (churn = 1) in the {name} period: nobody churned within "
                f"{labels.horizon_days} days after those snapshots; check the churn "
                "definition and the period"
            )
    vsplit = value_split(frame)

    # churn: binary, positives up-weighted (sqrt of the imbalance), calibrated after
    began = time.perf_counter()
    x, y = _matrix(split.train), split.train["churn"].to_numpy().astype(np.float64)
    xv, yv = _matrix(split.valid), split.valid["churn"].to_numpy().astype(np.float64)
    pos = float(y.sum())
    weight = math.sqrt(max(1.0, (len(y) - pos) / pos))
    churn_params = cfg.lgb_params() | {
        "objective": "binary",
        "metric": "auc",  # ranking: early stopping unaffected by the class weights
        "scale_pos_weight": weight,
    }
    say(f"training the churn model on {len(y):,} rows ({pos:,.0f} churners) ...")
    churn_model, churn_rounds = _fit(churn_params, x, y, xv, yv, cfg)
    calibrator = Calibrator.fit(
        np.asarray(churn_model.predict(xv, num_threads=cfg.threads), dtype=np.float64), yv
    )
    seconds["churn_model"] = time.perf_counter() - began

    # value: tweedie suits skewed non-negative money; huber when labels can be negative
    began = time.perf_counter()
    vx = _matrix(vsplit.train)
    vy = vsplit.train["value_minor"].to_numpy().astype(np.float64)
    objective = cfg.value_objective
    if objective == "tweedie" and float(np.min(vy)) < 0:
        objective = "huber"
    value_params = cfg.lgb_params() | {
        "objective": objective,
        "metric": "l1",
    }
    if objective == "tweedie":
        value_params["tweedie_variance_power"] = 1.5
    else:
        value_params["alpha"] = float(np.quantile(np.abs(vy), 0.9))
    say(f"training the value model ({objective}) on {len(vy):,} rows ...")
    value_model, value_rounds = _fit(
        value_params,
        vx,
        vy,
        _matrix(vsplit.valid),
        vsplit.valid["value_minor"].to_numpy().astype(np.float64),
        cfg,
    )
    seconds["value_model"] = time.perf_counter() - began

    meta: dict[str, Any] = {
        "label": labels.params(),
        "value_objective": objective,
        "trained_at": now.isoformat(),
        "code_version": code_version,
        "data_fingerprint": data_fingerprint(frame),
        "train_config": asdict(cfg),
        "test_as_of": split.test_date.isoformat(),
    }
    bundle = ModelBundle(
        churn_model, value_model, calibrator, FEATURE_NAMES, feature_fingerprint(), meta
    )

    say("evaluating on the test period ...")
    tx = _matrix(split.test)
    ty = split.test["churn"].to_numpy()
    p, v = bundle.predict(tx, threads=cfg.threads)
    # value tiers: platinum top 5%, gold next 15%, silver next 30% (see serving)
    meta["value_tier_edges"] = [float(np.quantile(v, q)) for q in (0.95, 0.80, 0.50)]
    test_frame = split.test.with_columns(
        pl.Series("churn_probability", p), pl.Series("predicted_value_minor", v)
    )
    vtx = _matrix(vsplit.test)
    vty = vsplit.test["value_minor"].to_numpy().astype(np.float64)
    _, vp = bundle.predict(vtx, threads=cfg.threads)
    value_test = vsplit.test.with_columns(pl.Series("predicted_value_minor", vp))

    notes: list[str] = []
    # null throughout = unavailable in the log (features._availability): the model
    # cannot split on them; they stay in the feature list so the live scorer is unchanged
    unavailable = [n for n in FEATURE_NAMES if frame[n].null_count() == frame.height]
    if unavailable:
        notes.append(
            f"{len(unavailable)} features unavailable in this data (no signal; null, unused "
            f"by the model): {', '.join(unavailable)}"
        )
    churn_base: dict[str, dict[str, float]] = {}
    for rule in RULES:
        score = np.nan_to_num(split.test[rule].to_numpy().astype(np.float64), nan=1e6)
        churn_base[f"rule_{rule}"] = {"roc_auc": roc_auc(ty, score)}
    churn_base["rule"] = {"roc_auc": max(m["roc_auc"] for m in churn_base.values())}
    value_base: dict[str, dict[str, float]] = {}
    if champion is not None:
        if champion.fingerprint == bundle.fingerprint:
            cp, _ = champion.predict(tx, threads=cfg.threads)
            churn_base["champion"] = classification_metrics(ty, cp)
            _, cv = champion.predict(vtx, threads=cfg.threads)
            value_base["champion"] = regression_metrics(vty, cv)
        else:
            notes.append("the champion uses other feature definitions: not compared")
    if truth_dir is not None:
        oracle = _oracle(truth_dir, split.test)
        if oracle is not None:
            churn_base["oracle"] = {"roc_auc": roc_auc(ty, oracle)}
        else:
            notes.append(f"no oracle: {truth_dir} has no hazard for the test customers")
    if events is not None:
        trailing = (
            trailing_value(
                clean_log(
                    events.filter(pl.col("customer_id").is_in(vsplit.test["customer_id"].implode()))
                ),
                vsplit.test.select("customer_id", "as_of"),
            )["trailing_value_minor"]
            .to_numpy()
            .astype(np.float64)
        )
        value_base["last_12_months"] = regression_metrics(vty, trailing)
    else:
        notes.append("no event log given: the last-12-months value baseline is not computed")

    evaluation = Evaluation(
        classification_metrics(ty, p),
        regression_metrics(vty, vp),
        churn_base,
        value_base,
        tuple(notes),
    )
    columns = {name: test_frame[name].to_numpy().astype(np.float64) for name in FEATURE_NAMES}
    columns["churn_probability"] = p
    columns["predicted_value_minor"] = v
    population = "snapshots"
    if events is not None:
        until = split.test["as_of"].max()
        if not isinstance(until, datetime):
            raise DataError("the test snapshots have no as-of time")
        at_events = event_time_columns(events, until, bundle, seed=cfg.seed)
        if at_events is not None:
            columns, population = at_events, "events"
    reference = reference_distributions(
        columns, [*FEATURE_NAMES, "churn_probability", "predicted_value_minor"]
    )
    bundle = replace(
        bundle,
        reference=reference,
        meta={**bundle.meta, "reference_population": population},
    )
    params: dict[str, Any] = {
        **labels.params(),
        **split.describe(),
        "value.test_as_of": vsplit.test_date.date().isoformat(),
        "value.train_rows": vsplit.train.height,
        "value.objective": objective,
        "churn.scale_pos_weight": round(weight, 4),
        **{f"lgb.{k}": v for k, v in cfg.lgb_params().items()},
        "max_rounds": cfg.max_rounds,
        "early_stopping": cfg.early_stopping,
        "features.unavailable": len(unavailable),
    }
    tags = {
        "feature_fingerprint": bundle.fingerprint,
        "data_fingerprint": str(meta["data_fingerprint"]),
        "code_version": code_version,
        "unavailable_features": ",".join(unavailable) or "none",
    }
    return TrainResult(
        bundle,
        evaluation,
        split,
        vsplit,
        params,
        tags,
        test_frame,
        value_test,
        seconds,
        {"churn": churn_rounds, "value": value_rounds},
    )


def _oracle(truth_dir: Path, test: pl.DataFrame) -> Array | None:
    """The simulator's true daily hazard in the week before each test as-of."""
    path = truth_dir / "hazard.parquet"
    if not path.exists():
        return None
    as_of = test["as_of"][0]
    week = (as_of - timedelta(days=7)).date()
    hazard = (
        pl.scan_parquet(path)
        .filter(
            (pl.col("week_start").cast(pl.Date) >= pl.lit(week))
            & (pl.col("week_start").cast(pl.Date) < pl.lit(as_of.date()))
        )
        .group_by("customer_id")
        .agg(pl.col("hazard").mean())
        .collect()
    )
    joined = test.select("customer_id").join(hazard, on="customer_id", how="left")
    if joined["hazard"].null_count() == joined.height:
        return None
    return joined["hazard"].fill_null(0.0).to_numpy().astype(np.float64)
