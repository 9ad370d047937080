"""Plots and one self-contained HTML report of a training run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from training._train import FEATURE_NAMES, TrainResult, _matrix

__all__ = ["write_report"]

SHAP_SAMPLE = 1000


def write_report(result: TrainResult, directory: Path, seed: int = 7) -> list[Path]:
    """PNG plots and ``report.html`` into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    test = result.test_frame
    y = test["churn"].to_numpy().astype(np.float64)
    p = test["churn_probability"].to_numpy()
    files = [
        _roc(y, p, directory / "roc.png"),
        _pr(y, p, directory / "pr.png"),
        _calibration(y, p, directory / "calibration.png"),
        _gain(y, p, directory / "gain.png"),
        _importance(result, directory / "feature_importance.png"),
        _shap(result, directory / "shap_summary.png", seed),
    ]
    files.append(_html(result, files, directory / "report.html"))
    return files


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def _roc(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], path: Path) -> Path:
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr, label="churn model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test period)")
    ax.legend()
    return _save(fig, path)


def _pr(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], path: Path) -> Path:
    precision, recall, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.axhline(float(np.mean(y)), ls="--", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test period)")
    ax.legend()
    return _save(fig, path)


def _calibration(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], path: Path) -> Path:
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, 20)
    mean_p = [float(np.mean(p[g])) for g in groups if len(g)]
    rate = [float(np.mean(y[g])) for g in groups if len(g)]
    fig, ax = plt.subplots(figsize=(5, 4))
    top = max(max(mean_p), max(rate), 0.01)
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.plot(mean_p, rate, "o-", label="model (20 equal-count bins)")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration")
    ax.legend()
    return _save(fig, path)


def _gain(y: npt.NDArray[np.float64], p: npt.NDArray[np.float64], path: Path) -> Path:
    order = np.argsort(-p, kind="stable")
    caught = np.cumsum(y[order]) / max(1, int(np.sum(y)))
    share = np.arange(1, len(y) + 1) / len(y)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(share, caught, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="share of customers contacted", ylabel="share of churners caught", title="Gain")
    ax.legend()
    return _save(fig, path)


def _importance(result: TrainResult, path: Path) -> Path:
    gain = result.bundle.churn.feature_importance(importance_type="gain")
    order = np.argsort(gain)[-20:]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.barh([FEATURE_NAMES[i] for i in order], gain[order])
    ax.set(xlabel="total gain", title="Churn model: top 20 features")
    return _save(fig, path)


def _shap(result: TrainResult, path: Path, seed: int) -> Path:
    test = result.test_frame
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(test.height, size=min(SHAP_SAMPLE, test.height), replace=False))
    x = _matrix(test[idx])
    contrib = result.bundle.contributions(x, threads=2)[:, :-1]
    order = np.argsort(np.mean(np.abs(contrib), axis=0))[-15:]
    fig, ax = plt.subplots(figsize=(7, 6))
    for row, j in enumerate(order):
        values = x[:, j]
        finite = np.isfinite(values)
        colour = np.zeros(len(values))
        if finite.any():
            lo, hi = np.nanpercentile(values, [5, 95])
            colour = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
        jitter = rng.uniform(-0.3, 0.3, len(values))
        ax.scatter(contrib[:, j], row + jitter, c=colour, cmap="coolwarm", s=4)
    ax.set_yticks(range(len(order)), [FEATURE_NAMES[j] for j in order])
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="contribution to churn log-odds (colour: feature value, low blue, high red)",
        title=f"SHAP summary ({len(idx)} test customers)",
    )
    return _save(fig, path)


def _html(result: TrainResult, images: list[Path], path: Path) -> Path:
    ev = result.evaluation
    params = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(result.params.items())
    )
    tags = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for k, v in sorted(result.tags.items())
    )
    imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in images
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Churn engine training report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}}figure{{display:inline-block;margin:8px}}</style>
</head><body>
<h1>Training report</h1>
<p>Test as-of {result.split.test_date.date()}: {result.split.test.height:,} customers.
Best rounds: churn {result.best_rounds["churn"]}, value {result.best_rounds["value"]}.</p>
<h2>Test-period comparison</h2><pre>{html.escape(ev.table())}</pre>
<h2>Plots</h2>{imgs}
<h2>Tags</h2><table>{tags}</table>
<h2>Parameters</h2><table>{params}</table>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
