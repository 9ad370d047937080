"""``churn drift-report``: the live drift windows of the workers as one HTML page.

Each worker serves its window on ``/drift/`` (counts per column and reference bin,
optionally only the newest ``days``); the report sums the workers' counts (each
sees its own customers), measures PSI and KS on the sum, and draws reference vs
live histograms for both scores and the most drifted features, with the table of
every column. The page is self-contained (plots inlined as PNG).
"""

from __future__ import annotations

import base64
import html
import io
import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitoring._drift import PSI_RETRAIN, PSI_WATCH, merge_snapshots

__all__ = ["fetch_snapshots", "render_drift_report", "write_drift_report"]

SCORES = ("churn_probability", "predicted_value_minor")


def fetch_snapshots(urls: Iterable[str], days: float | None = None) -> list[dict[str, Any]]:
    """Each worker's ``/drift/`` (``urls`` are worker base URLs)."""
    out = []
    for base in urls:
        query = f"?{urllib.parse.urlencode({'days': days})}" if days else ""
        url = base.rstrip("/") + "/drift/" + query
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {base!r}")
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - checked above
                out.append(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RuntimeError(f"{base} has no drift window yet (no champion loaded)") from exc
            raise
    return out


def _level(psi: float) -> str:
    return "shifted" if psi > PSI_RETRAIN else ("watch" if psi >= PSI_WATCH else "stable")


def _plot(
    name: str, edges: Sequence[float], expected: Sequence[float], counts: Sequence[int]
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = np.asarray(counts, np.float64)
    live = live / live.sum() if live.sum() else live
    labels = [f"≤{edges[0]:.3g}"] if edges else ["all"]
    labels += [f"≤{e:.3g}" for e in edges[1:]]
    if edges:
        labels.append(f">{edges[-1]:.3g}")
    labels.append("missing")
    x = np.arange(len(expected))
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.bar(x - 0.2, expected, 0.4, label="training reference", color="#7a8da6")
    ax.bar(x + 0.2, live, 0.4, label="live window", color="#d9822b")
    ax.set_xticks(x, labels[: len(x)], rotation=45, ha="right", fontsize=7)
    ax.set(title=name, ylabel="share")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_drift_report(
    snapshots: Sequence[Mapping[str, Any]],
    *,
    sources: Sequence[str],
    now: datetime,
    days: float | None = None,
    top: int = 10,
) -> str:
    """The HTML page for the workers' windows (merged)."""
    merged = merge_snapshots(snapshots)
    columns: list[str] = merged["columns"]
    index = {c: i for i, c in enumerate(columns)}
    drift = merged["drift"]
    n = max((int(d["n"]) for d in drift), default=0)
    versions = sorted({str(s.get("model_version")) for s in snapshots})
    features = [d for d in drift if d["column"] not in SCORES]
    shown = [c for c in SCORES if c in index] + [d["column"] for d in features[:top]]
    by_column = {d["column"]: d for d in drift}
    plots = []
    for name in shown:
        i = index[name]
        img = _plot(name, merged["edges"][i], merged["expected"][i], merged["counts"][i])
        d = by_column[name]
        plots.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{img}">'
            f"<figcaption>{html.escape(name)}: PSI {d['psi']:.3f}, KS {d['ks']:.3f} "
            f"({_level(float(d['psi']))})</figcaption></figure>"
        )
    rows = "".join(
        f'<tr class="{_level(float(d["psi"]))}"><td>{html.escape(d["column"])}</td>'
        f"<td>{'score' if d['column'] in SCORES else 'feature'}</td>"
        f"<td>{float(d['psi']):.4f}</td><td>{float(d['ks']):.4f}</td><td>{int(d['n'])}</td>"
        f"<td>{_level(float(d['psi']))}</td></tr>"
        for d in drift
    )
    score = by_column.get("churn_probability")
    verdict = (
        "Score drift above 0.25: retrain, compare the challenger and promote it if it is "
        "not worse (`churn features build`, `churn train`, `churn models`, `churn promote`)."
        if score and float(score["psi"]) > PSI_RETRAIN
        else "Scores are within the usual range of the training reference."
    )
    window = f"the newest {days:g} days" if days else "the whole window"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; }}
tr.watch {{ background: #fff4d6; }} tr.shifted {{ background: #fbd9d3; }}
figure {{ display: inline-block; margin: 0.5em; }} figcaption {{ font-size: 0.85em; }}
</style></head><body>
<h1>Drift report</h1>
<p>Generated {now.isoformat(timespec="seconds")} from {len(snapshots)} worker(s):
{html.escape(", ".join(sources))}; model version(s) {html.escape(", ".join(versions))};
{window} of event time, {n} scores ({int(merged["too_old"])} arrived too late to count).</p>
<p><strong>{html.escape(verdict)}</strong></p>
<p>PSI &lt; {PSI_WATCH} is stable, {PSI_WATCH}-{PSI_RETRAIN} worth watching, &gt; {PSI_RETRAIN}
a shift. The reference is the training run's test period as the live scorer sees it (features and
scores at customers' events); bins are the reference's deciles, with a bin for missing values.</p>
<h2>Reference vs live</h2>
{"".join(plots)}
<h2>Every column</h2>
<table><tr><th>column</th><th>kind</th><th>PSI</th><th>KS</th><th>n</th><th>level</th></tr>
{rows}</table>
</body></html>
"""


def write_drift_report(
    urls: Sequence[str], out: Path, *, now: datetime, days: float | None = None
) -> dict[str, Any]:
    """Fetch, merge, render and write; returns the merged drift (worst first)."""
    snapshots = fetch_snapshots(urls, days)
    out.write_text(
        render_drift_report(snapshots, sources=list(urls), now=now, days=days), encoding="utf-8"
    )
    return merge_snapshots(snapshots)
