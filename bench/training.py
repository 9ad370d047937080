"""Training time on a whole training set: both models on every row.

``python -m bench.training TRAIN_SET.parquet [--churn-rounds N] [--value-rounds N]``
trains the churn classifier and the value regressor with the engine's LightGBM
settings on all rows (value: rows whose label is known) for fixed numbers of rounds
(default: what early stopping chose on the same data), and prints a Markdown line.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from features import FEATURES
from training import TrainConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train_set", type=Path)
    parser.add_argument("--churn-rounds", type=int, default=200)
    parser.add_argument("--value-rounds", type=int, default=700)
    args = parser.parse_args()
    names = [f.name for f in FEATURES]
    frame = pl.read_parquet(args.train_set)
    cfg = TrainConfig()
    x = frame.select(names).to_numpy().astype(np.float64)
    y = frame["churn"].to_numpy().astype(np.float64)
    pos = float(y.sum())
    began = time.perf_counter()
    lgb.train(
        cfg.lgb_params()
        | {"objective": "binary", "scale_pos_weight": math.sqrt((len(y) - pos) / pos)},
        lgb.Dataset(x, y, feature_name=names),
        num_boost_round=args.churn_rounds,
    )
    churn_s = time.perf_counter() - began
    known = frame.filter(pl.col("value_minor").is_not_null())
    vx = known.select(names).to_numpy().astype(np.float64)
    vy = known["value_minor"].to_numpy().astype(np.float64)
    began = time.perf_counter()
    lgb.train(
        cfg.lgb_params() | {"objective": "tweedie", "tweedie_variance_power": 1.5},
        lgb.Dataset(vx, vy, feature_name=names),
        num_boost_round=args.value_rounds,
    )
    value_s = time.perf_counter() - began
    print(
        f"| {len(y):,} x {len(names)} | {args.churn_rounds} | {churn_s:.1f} | {len(vy):,} | "
        f"{args.value_rounds} | {value_s:.1f} | **{churn_s + value_s:.1f}** |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
