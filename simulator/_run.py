"""Running a simulation end to end: chunks → sink(s), ground truth, summary."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features import ordered_map
from simulator import _bank as K
from simulator._config import SEGMENTS, SimConfig
from simulator._output import (
    DirtyReport,
    ParquetDataset,
    Sink,
    chunk_table,
    chunks,
    log_arrow_schema,
    make_dirty,
    to_frame,
    truth_frames,
)

logger = logging.getLogger(__name__)

__all__ = ["SimSummary", "simulate", "truth_dir_for", "write_parquet"]


@dataclass(slots=True)
class SimSummary:
    """What a simulation produced, for people (``format``) and tests."""

    config: SimConfig
    events: int = 0
    records: int = 0
    events_per_type: Counter[str] = field(default_factory=Counter)
    customers_per_segment: Counter[str] = field(default_factory=Counter)
    churned_per_segment: Counter[str] = field(default_factory=Counter)
    exposure_years_per_segment: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )
    dirty_per_kind: Counter[str] = field(default_factory=Counter)
    yearly_contribution: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def churn_rate_per_year(self, segment: str | None = None) -> float:
        segs = [segment] if segment else list(self.customers_per_segment)
        exposure = sum(self.exposure_years_per_segment[s] for s in segs)
        return sum(self.churned_per_segment[s] for s in segs) / exposure if exposure else 0.0

    def format(self) -> str:
        cfg = self.config
        lines = [
            f"Simulated bank: {cfg.customers:,} customers, {cfg.months} months from {cfg.start}, "
            f"seed {cfg.seed}",
            f"  {self.events:,} events ({self.records:,} records incl. dirty) in {self.seconds:.1f} s "
            f"= {self.events / max(self.seconds, 1e-9):,.0f} events/s",
            "",
            f"  {'segment':<10}{'customers':>11}{'churned':>10}{'churn/yr':>10}",
        ]
        for s in SEGMENTS:
            lines.append(
                f"  {s:<10}{self.customers_per_segment[s]:>11,}{self.churned_per_segment[s]:>10,}"
                f"{self.churn_rate_per_year(s):>10.1%}"
            )
        lines.append(
            f"  {'all':<10}{sum(self.customers_per_segment.values()):>11,}"
            f"{sum(self.churned_per_segment.values()):>10,}{self.churn_rate_per_year():>10.1%}"
        )
        lines += ["", f"  {'event type':<22}{'events':>14}{'share':>8}"]
        for name, count in self.events_per_type.most_common():
            lines.append(f"  {name:<22}{count:>14,}{count / max(self.events, 1):>8.1%}")
        if self.yearly_contribution:
            q = np.quantile(np.asarray(self.yearly_contribution), [0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
            lines += [
                "",
                f"  customer value (contribution per year, {cfg.currency}): "
                + ", ".join(
                    f"p{p}={v:,.0f}" for p, v in zip((10, 25, 50, 75, 90, 99), q, strict=True)
                ),
                f"  negative-value customers: "
                f"{np.mean(np.asarray(self.yearly_contribution) < 0):.1%}",
            ]
        if self.dirty_per_kind:
            lines += [
                "",
                "  dirty records: "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.dirty_per_kind.items())),
            ]
        return "\n".join(lines)


def truth_dir_for(out: Path) -> Path:
    """Where the ground truth of an event log lives: ``events.parquet`` → ``events.truth/``."""
    return out.with_name(out.name.removesuffix(".parquet") + ".truth")


class _TruthWriter:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.writers: dict[str, pq.ParquetWriter] = {}

    def write(self, name: str, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.folder / f"{name}.parquet", table.schema)
        self.writers[name].write_table(table)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


Produced = tuple[pa.Table | None, dict[str, pl.DataFrame], SimSummary, list[dict[str, object]]]


def _produce(cfg: SimConfig, i: int, dataset: ParquetDataset | None) -> Produced:
    """Everything one chunk yields; runs in a worker process (or inline).

    With a ``dataset`` the chunk's part is written here and no table is returned.
    """
    chunk = K.simulate_chunk(cfg, i)
    table = chunk_table(cfg, chunk)
    part = SimSummary(cfg)
    part.events = table.num_rows
    for code, count in zip(*np.unique(chunk.events["type"], return_counts=True), strict=True):
        part.events_per_type[K.TYPES[int(code)]] += int(count)
    _account(part, cfg, chunk)
    report = DirtyReport()
    if cfg.dirty_rate > 0:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, 0xD1]))
        frame = make_dirty(to_frame(table), cfg.dirty_rate, rng, report)
        table = frame.to_arrow().cast(log_arrow_schema())
    part.records = table.num_rows
    truth = truth_frames(cfg, chunk)
    if dataset is not None:
        dataset.write(table, i)
        return None, truth, part, report.rows
    return table, truth, part, report.rows


def simulate(
    cfg: SimConfig,
    sink: Sink,
    truth_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> SimSummary:
    """Simulate the bank described by ``cfg`` into ``sink``; write ground truth if asked.

    Chunks are simulated by up to ``workers`` processes (default: one per core) and
    handed over in order, so the output is the same whatever the number of workers.
    A :class:`ParquetDataset` sink is written by the workers themselves.
    """
    began = time.perf_counter()
    summary = SimSummary(cfg)
    truth = _TruthWriter(truth_dir) if truth_dir else None
    dirty_rows: list[dict[str, object]] = []
    indices = list(chunks(cfg))
    workers = min(workers or os.cpu_count() or 1, len(indices))
    dataset = sink if isinstance(sink, ParquetDataset) else None

    def consume(result: Produced, i: int) -> None:
        table, truth_parts, part, rows = result
        if table is not None:
            sink.write(table, i)
        _merge(summary, part)
        dirty_rows.extend(rows)
        summary.dirty_per_kind.update(str(r["kind"]) for r in rows)
        if truth is not None:
            for name, frame in truth_parts.items():
                truth.write(name, frame)
        if progress:
            progress(i + 1, len(indices))

    try:
        produce = functools.partial(_produce, cfg, dataset=dataset)
        for i, result in zip(indices, ordered_map(produce, indices, workers), strict=True):
            consume(result, i)
        if truth is not None and dirty_rows:
            truth.write("dirty", pl.DataFrame(dirty_rows))
    finally:
        sink.close()
        if truth is not None:
            truth.close()
    summary.seconds = time.perf_counter() - began
    return summary


def _merge(total: SimSummary, part: SimSummary) -> None:
    total.events += part.events
    total.records += part.records
    total.events_per_type.update(part.events_per_type)
    total.customers_per_segment.update(part.customers_per_segment)
    total.churned_per_segment.update(part.churned_per_segment)
    for segment, years in part.exposure_years_per_segment.items():
        total.exposure_years_per_segment[segment] += years
    total.yearly_contribution.extend(part.yearly_contribution)


def _account(summary: SimSummary, cfg: SimConfig, chunk: K.Chunk) -> None:
    c = chunk.customers
    days = cfg.days
    onb = np.maximum(c["onboard_day"].astype(np.int64), 0)
    end = np.where(c["churn_day"] >= 0, c["churn_day"], days).astype(np.int64)
    exposure = np.maximum(end - onb, 0) / 365.25
    months_alive = np.maximum((end - onb) / 30.44, 1e-9)
    yearly = chunk.contribution.sum(axis=1) / months_alive * 12
    for s_ix, s in enumerate(SEGMENTS):
        mask = c["segment"] == s_ix
        summary.customers_per_segment[s] += int(mask.sum())
        summary.churned_per_segment[s] += int((mask & (c["churn_day"] >= 0)).sum())
        summary.exposure_years_per_segment[s] += float(exposure[mask].sum())
    summary.yearly_contribution.extend(yearly[exposure > 0.25].tolist())


def write_parquet(
    cfg: SimConfig,
    out: Path,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> SimSummary:
    """Simulate into the Parquet dataset ``out`` with ground truth in :func:`truth_dir_for`."""
    return simulate(cfg, ParquetDataset(out), truth_dir_for(out), progress, workers)
