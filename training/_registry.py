"""The MLflow registry of record: register, load, promote, list.

One registered model (``churn-engine``); each version carries both boosters, the
calibrator, the feature fingerprint and the reference distributions as a pyfunc
model whose loader reads LightGBM text files (no pickle). New versions get the alias
``challenger``; ``churn promote`` moves ``champion``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from features.errors import ChurnEngineError, ModelNotFoundError
from training._bundle import ModelBundle
from training._metrics import classification_metrics, regression_metrics
from training._report import write_report
from training._store import Store
from training._train import FEATURE_NAMES, TrainResult, _matrix

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "KEY_METRICS",
    "Promotion",
    "list_models",
    "load_bundle",
    "promote",
    "register",
]

logger = logging.getLogger(__name__)

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
KEY_METRICS: Final = (
    "test.churn.roc_auc",
    "test.churn.pr_auc",
    "test.churn.ece",
    "test.churn.auc_over_oracle",
    "test.value.mae",
)
MODEL_PATH: Final = "model"
TEST_SET: Final = "evaluation/test.parquet"
VALUE_TEST_SET: Final = "evaluation/value_test.parquet"


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"churn-engine=={version('churn-engine')}",
        f"lightgbm=={version('lightgbm')}",
        f"numpy=={version('numpy')}",
        f"pandas=={version('pandas')}",
    ]


def register(
    store: Store,
    result: TrainResult,
    *,
    run_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Log the run and register a new version with alias ``challenger``.

    Returns ``(version, run_id)``. If anything fails after the version is created,
    the version is deleted again: no half-written version is left behind.
    """
    import mlflow
    from mlflow.models import infer_signature

    say = progress or (lambda _msg: None)
    client = store.client()
    exp_id = store.experiment_id(client)
    version: str | None = None
    with tempfile.TemporaryDirectory(prefix="churn-train-") as tmp:
        tmpdir = Path(tmp)
        bundle_dir = result.bundle.save(tmpdir / "bundle")
        say("writing the report and plots ...")
        report_files = write_report(result, tmpdir / "report")
        result.test_frame.write_parquet(tmpdir / "test.parquet")
        result.value_test.write_parquet(tmpdir / "value_test.parquet")
        sample = result.test_frame.head(50)
        x = sample.select(FEATURE_NAMES).to_pandas()
        p, v = result.bundle.predict(_matrix(sample))
        signature = infer_signature(
            x, pl.DataFrame({"churn_probability": p, "value_minor": v}).to_pandas()
        )
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            try:
                mlflow.log_params({k: str(v)[:500] for k, v in result.params.items()})
                mlflow.log_metrics(result.evaluation.metrics())
                mlflow.log_metrics({f"seconds.{k}": v for k, v in result.seconds.items()})
                mlflow.log_metrics({f"best_rounds.{k}": v for k, v in result.best_rounds.items()})
                mlflow.set_tags(result.tags)
                for f in report_files:
                    mlflow.log_artifact(str(f), "report")
                mlflow.log_artifact(str(bundle_dir / "reference.json"), "reference")
                mlflow.log_artifact(str(tmpdir / "test.parquet"), "evaluation")
                mlflow.log_artifact(str(tmpdir / "value_test.parquet"), "evaluation")
                say("logging the model ...")
                info = mlflow.pyfunc.log_model(
                    name=MODEL_PATH,
                    loader_module="training._pyfunc",
                    data_path=str(bundle_dir),
                    signature=signature,
                    pip_requirements=_pip_requirements(),
                )
                mv = mlflow.register_model(info.model_uri, store.model_name, tags=result.tags)
                version = str(mv.version)
                client.set_model_version_tag(store.model_name, version, "run_id", run.info.run_id)
                for key, value in result.evaluation.metrics().items():
                    if key in KEY_METRICS:
                        client.set_model_version_tag(store.model_name, version, key, f"{value:.6f}")
                client.set_registered_model_alias(store.model_name, CHALLENGER, version)
            except BaseException:
                if version is not None:
                    client.delete_model_version(store.model_name, version)
                raise
    return version, run.info.run_id


def _bundle_dir(local: Path) -> Path:
    """The bundle inside a downloaded pyfunc model directory."""
    for candidate in (local, *sorted(p.parent for p in local.rglob("meta.json"))):
        if (candidate / "meta.json").is_file():
            return candidate
    raise ModelNotFoundError(f"no model bundle in {local}")


def load_bundle(
    store: Store, ref: str = CHAMPION, dst: Path | None = None
) -> tuple[ModelBundle, str]:
    """The bundle of an alias (``champion``) or a version number, and its version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = store.client()
    try:
        if ref.isdigit():
            mv = client.get_model_version(store.model_name, ref)
        else:
            mv = client.get_model_version_by_alias(store.model_name, ref)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"no model version {ref!r} of {store.model_name} in {store.tracking_uri}"
        ) from exc
    target = dst or Path(tempfile.mkdtemp(prefix="churn-model-"))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{store.model_name}/{mv.version}", dst_path=str(target)
    )
    return ModelBundle.load(_bundle_dir(Path(local))), str(mv.version)


@dataclass(frozen=True, slots=True)
class Promotion:
    promoted: bool
    challenger: str
    champion: str | None
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]

    def format(self) -> str:
        lines = [self.reason]
        if self.champion_metrics:
            lines.append(
                f"{'':<14}{'challenger v' + self.challenger:>16}{'champion v' + str(self.champion):>16}"
            )
            for key in self.challenger_metrics:
                lines.append(
                    f"{key:<14}{self.challenger_metrics[key]:>16.4f}"
                    f"{self.champion_metrics.get(key, float('nan')):>16.4f}"
                )
        return "\n".join(lines)


def _scores(bundle: ModelBundle, test: pl.DataFrame, value_test: pl.DataFrame) -> dict[str, float]:
    y = test["churn"].to_numpy()
    p, _ = bundle.predict(_matrix(test), threads=2)
    _, v = bundle.predict(_matrix(value_test), threads=2)
    m = classification_metrics(y, p)
    r = regression_metrics(value_test["value_minor"].to_numpy().astype(np.float64), v)
    return {
        "roc_auc": m["roc_auc"],
        "pr_auc": m["pr_auc"],
        "brier": m["brier"],
        "ece": m["ece"],
        "value_mae": r["mae"],
    }


def promote(
    store: Store,
    *,
    tolerance: float = 0.005,
    force: bool = False,
    reason: str | None = None,
    who: str,
    now: datetime,
) -> Promotion:
    """Move ``champion`` to the challenger if it is not worse beyond ``tolerance``.

    Both are scored on the challenger's test period (the latest). The challenger
    must not lose more than ``tolerance`` of ROC-AUC, nor gain more than
    ``tolerance`` of calibration error. ``force`` promotes anyway and records who
    and why on the version.
    """
    if force and not reason:
        raise ChurnEngineError("--force needs --reason: say why the checks are overridden")
    client = store.client()
    with tempfile.TemporaryDirectory(prefix="churn-promote-") as tmp:
        challenger, cv = load_bundle(store, CHALLENGER, Path(tmp) / "challenger")
        mv = client.get_model_version(store.model_name, cv)
        run_id = mv.tags.get("run_id") or mv.run_id
        import mlflow

        test_path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=TEST_SET, dst_path=tmp
        )
        value_path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=VALUE_TEST_SET, dst_path=tmp
        )
        test = pl.read_parquet(test_path)
        value_test = pl.read_parquet(value_path)
        new = _scores(challenger, test, value_test)
        try:
            champion, ch = load_bundle(store, CHAMPION, Path(tmp) / "champion")
        except ModelNotFoundError:
            champion, ch = None, None
        old: dict[str, float] = {}
        if ch == cv:
            return Promotion(False, cv, ch, f"version {cv} is already the champion", new, old)
        if champion is None:
            ok, why = True, "no champion yet: the challenger becomes champion"
        elif champion.fingerprint != challenger.fingerprint:
            ok, why = (
                True,
                (
                    "the champion was trained on other feature definitions and cannot score "
                    "today's features: the challenger replaces it"
                ),
            )
        else:
            old = _scores(champion, test, value_test)
            auc_drop = old["roc_auc"] - new["roc_auc"]
            ece_rise = new["ece"] - old["ece"]
            if auc_drop > tolerance:
                ok, why = (
                    False,
                    (
                        f"ROC-AUC {new['roc_auc']:.4f} is {auc_drop:.4f} below the champion's "
                        f"{old['roc_auc']:.4f} (tolerance {tolerance})"
                    ),
                )
            elif ece_rise > tolerance:
                ok, why = (
                    False,
                    (
                        f"calibration error {new['ece']:.4f} is {ece_rise:.4f} above the "
                        f"champion's {old['ece']:.4f} (tolerance {tolerance})"
                    ),
                )
            else:
                ok, why = (
                    True,
                    (
                        f"ROC-AUC {new['roc_auc']:.4f} vs {old['roc_auc']:.4f}, calibration error "
                        f"{new['ece']:.4f} vs {old['ece']:.4f}: within tolerance {tolerance}"
                    ),
                )
        forced = not ok and force
        if forced:
            ok, why = True, f"forced by {who}: {reason} (checks said: {why})"
        if ok:
            client.set_registered_model_alias(store.model_name, CHAMPION, cv)
            stamp = now.isoformat()
            for key, value in {
                "promoted_at": stamp,
                "promoted_by": who,
                "promotion_reason": reason or why,
                "previous_champion": ch or "",
                "forced": str(forced).lower(),
            }.items():
                client.set_model_version_tag(store.model_name, cv, key, value)
            why = f"promoted version {cv} to champion: {why}"
        else:
            why = f"not promoted: {why}"
        return Promotion(ok, cv, ch, why, new, old)


def list_models(store: Store) -> list[dict[str, Any]]:
    """Every version with its aliases, creation time and key metrics."""
    from mlflow.exceptions import MlflowException

    client = store.client()
    try:
        model = client.get_registered_model(store.model_name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{store.model_name}'"):
        rows.append(
            {
                "version": int(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
                **{k: float(mv.tags[k]) for k in KEY_METRICS if k in mv.tags},
                "feature_fingerprint": mv.tags.get("feature_fingerprint", ""),
                "promoted_by": mv.tags.get("promoted_by", ""),
            }
        )
    return sorted(rows, key=lambda r: -int(r["version"]))
