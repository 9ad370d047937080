"""Training, evaluation, registry and promotion (real MLflow server for the integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from churn import main
from features import LabelConfig
from tests.conftest import NOW, fast_config
from training import (
    CHALLENGER,
    CHAMPION,
    Store,
    TrainConfig,
    churn_split,
    expected_calibration_error,
    list_models,
    load_bundle,
    promote,
    register,
    train_models,
    value_split,
)
from training._metrics import lift_at

FAST = fast_config()


def test_time_split_leaves_a_horizon_between_periods(train_set: pl.DataFrame) -> None:
    split = churn_split(train_set, 90)
    assert max(split.train_dates).timestamp() + 90 * 86400 <= min(split.valid_dates).timestamp()
    assert max(split.valid_dates).timestamp() + 90 * 86400 <= split.test_date.timestamp()
    assert split.test["as_of"].n_unique() == 1
    assert split.test_date == train_set["as_of"].max()


def test_value_split_keeps_customers_apart(train_set: pl.DataFrame) -> None:
    vs = value_split(train_set)
    parts = [set(p["customer_id"].to_list()) for p in (vs.train, vs.valid, vs.test)]
    assert not parts[0] & parts[1]
    assert not parts[0] & parts[2]
    assert not parts[1] & parts[2]
    assert vs.test["value_minor"].null_count() == 0
    assert (vs.train["as_of"] < vs.test_date).all()


def test_calibration_error_and_lift() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.3, 50_000)
    y = (rng.uniform(size=p.size) < p).astype(np.float64)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p * 2, 0, 1)) > 0.1
    lift, capture = lift_at(y, p)
    assert lift > 1.5
    assert 0.1 < capture < 0.5


def test_training_is_reproducible_and_calibrated(train_set: pl.DataFrame, tmp_path: Path) -> None:
    a = train_models(train_set, LabelConfig(), FAST, now=NOW)
    b = train_models(train_set, LabelConfig(), FAST, now=NOW)
    da, db = a.bundle.save(tmp_path / "a"), b.bundle.save(tmp_path / "b")
    for name in ("churn_model.txt", "value_model.txt", "calibration.json"):
        assert (da / name).read_bytes() == (db / name).read_bytes(), name
    other = train_models(train_set, LabelConfig(), TrainConfig(max_rounds=150, seed=8), now=NOW)
    assert other.bundle.churn.model_to_string() != a.bundle.churn.model_to_string()
    ev = a.evaluation
    assert ev.churn["roc_auc"] > ev.churn_baselines["rule"]["roc_auc"]
    assert ev.churn["ece"] < 0.05
    # every feature and both scores have a reference distribution for drift monitoring
    ref = a.bundle.reference
    assert {"churn_probability", "predicted_value_minor"} <= set(ref)
    assert set(a.bundle.features) <= set(ref)


def _embedded(tmp_path: Path) -> Store:
    return Store.resolve(tmp_path / "data", environ={})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2025-06-01", "--end", "2025-01-01"], "the period is empty"),
        (["--horizon", "900d"], "too short for a 900-day horizon"),
        (
            ["--start", "2025-09-01", "--end", "2025-10-01", "--horizon", "80d"],
            "not enough history",
        ),
    ],
)
def test_unusable_periods_fail_clearly_and_register_nothing(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["train", "--events", str(bank), "--data-dir", str(tmp_path / "data"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1  # one clear message, no traceback
    assert list_models(_embedded(tmp_path)) == []


def test_bad_training_sets_fail_clearly(
    train_set: pl.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_churn = tmp_path / "no_churn.parquet"
    train_set.with_columns(pl.lit(0, dtype=pl.Int8).alias("churn")).write_parquet(no_churn)
    lacking = tmp_path / "lacking.parquet"
    train_set.drop("balance", "logins_30d").write_parquet(lacking)
    events = tmp_path / "events_lacking.parquet"
    pl.DataFrame({"customer_id": ["C1"], "event_id": ["e1"]}).write_parquet(events)
    for args, message in [
        (["--train-set", str(no_churn)], "no positive labels"),
        (["--train-set", str(lacking)], "lacks 2 columns (logins_30d, balance)"),
        (["--events", str(events)], "lacks columns"),
    ]:
        code = main(["train", *args, "--data-dir", str(tmp_path / "data")])
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err
        assert err.count("\n") == 1
    assert list_models(_embedded(tmp_path)) == []


@pytest.mark.integration
def test_register_promote_and_load_from_a_real_mlflow_server(
    mlflow_server: str, train_set: pl.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.resolve(tmp_path, environ={"MLFLOW_TRACKING_URI": mlflow_server})
    assert not store.embedded
    good = train_models(train_set, LabelConfig(), FAST, now=NOW, code_version="test")
    version, _run_id = register(store, good)
    bundle, v = load_bundle(store, CHALLENGER)
    assert v == version
    assert bundle.fingerprint == good.bundle.fingerprint

    first = promote(store, who="tester", now=NOW)
    assert first.promoted
    assert "no champion yet" in first.reason
    # a fresh process loads the champion through MLflow and predicts what training did
    features_path = tmp_path / "features.parquet"
    good.test_frame.select(good.bundle.features).write_parquet(features_path)
    out = tmp_path / "pred.json"
    script = (
        "import sys, json, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/churn-engine@champion')\n"
        "p = m.predict(pd.read_parquet(sys.argv[1]))\n"
        "json.dump({'churn': p['churn_probability'].tolist(), "
        "'value': p['value_minor'].tolist()}, open(sys.argv[2], 'w'))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    subprocess.run(
        [sys.executable, "-c", script, str(features_path), str(out)], env=env, check=True
    )
    pred = json.loads(out.read_text())
    np.testing.assert_allclose(
        pred["churn"], good.test_frame["churn_probability"], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(pred["value"], good.test_frame["predicted_value_minor"], rtol=1e-12)

    # a much weaker challenger is refused, then forced with a recorded reason
    weak = train_models(
        train_set, LabelConfig(), TrainConfig(max_rounds=1, num_leaves=2, threads=1), now=NOW
    )
    weak_version, _ = register(store, weak)
    refused = promote(store, who="tester", now=NOW)
    assert not refused.promoted
    assert "ROC-AUC" in refused.reason
    assert load_bundle(store, CHAMPION)[1] == version
    forced = promote(store, force=True, reason="audit drill", who="alice", now=NOW)
    assert forced.promoted
    assert load_bundle(store, CHAMPION)[1] == weak_version
    rows = {r["version"]: r for r in list_models(store)}
    assert rows[int(weak_version)]["promoted_by"] == "alice"
    assert rows[int(weak_version)]["aliases"] == ["challenger", "champion"]
    assert rows[int(version)]["test.churn.roc_auc"] == pytest.approx(
        good.evaluation.churn["roc_auc"], abs=1e-6
    )

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        assert main(["models"]) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    listing = capsys.readouterr().out
    assert f"{weak_version}  challenger,champion" in listing
