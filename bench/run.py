"""`make bench`: run the benchmarks and write BENCHMARKS.md.

Each figure is the median of several runs; where there is a baseline it is measured
side by side in the same run, and the ratio is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, Python {platform.python_version()}"


def _simulate(customers: int, months: int, workers: int, out: Path) -> dict[str, float]:
    """One `churn simulate` in a child process: events/s and peak RSS of any process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "churn",
            "simulate",
            "--customers",
            str(customers),
            "--months",
            str(months),
            "--seed",
            "7",
            "--workers",
            str(workers),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    events = int(
        next(ln for ln in proc.stdout.splitlines() if " events (" in ln).split()[0].replace(",", "")
    )
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "peak_rss_mib": max(peak, before) / 1024,
        "file_mib": sum(p.stat().st_size for p in out.glob("part-*.parquet")) / 2**20,
    }


def bench_simulator(runs: int, big: int) -> list[str]:
    lines = ["## Simulator (`churn simulate`)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for _ in range(runs):
            one = _simulate(20_000, 24, 1, Path(tmp) / "one.parquet")
            two = _simulate(20_000, 24, 2, Path(tmp) / "two.parquet")
            rows.append((one, two))
        med = lambda key, i: statistics.median(r[i][key] for r in rows)  # noqa: E731
        lines += [
            f"20,000 customers x 24 months, seed 7, median of {runs} runs, whole command "
            "(process start, imports, simulation, Parquet + ground truth written):",
            "",
            "| workers | events | seconds | events/s | ratio vs 1 worker |",
            "|---|---|---|---|---|",
            f"| 1 | {med('events', 0):,.0f} | {med('seconds', 0):.1f} | {med('events_per_s', 0):,.0f} | 1.00 |",
            f"| 2 | {med('events', 1):,.0f} | {med('seconds', 1):.1f} | {med('events_per_s', 1):,.0f} | "
            f"{statistics.median(r[1]['events_per_s'] / r[0]['events_per_s'] for r in rows):.2f} |",
            "",
        ]
        if big:
            bigs = [_simulate(big, 24, 2, Path(tmp) / "big.parquet") for _ in range(runs)]
            rate = statistics.median(r["events_per_s"] for r in bigs)
            each = ", ".join(f"{r['events_per_s']:,.0f}" for r in bigs)
            lines += [
                f"Acceptance size: `churn simulate --customers {big} --months 24 --seed 7` "
                f"(2 workers, median of {runs} runs):",
                "",
                f"- {bigs[0]['events']:,.0f} events in "
                f"{statistics.median(r['seconds'] for r in bigs):.1f} s = **{rate:,.0f} events/s** "
                f"(runs: {each})",
                f"- peak resident memory of any one process: **{max(r['peak_rss_mib'] for r in bigs):,.0f} MiB** "
                f"at {big:,} customers vs {max(r[1]['peak_rss_mib'] for r in rows):,.0f} MiB at 20,000: "
                "generated in chunks of 12,500 customers, memory does not grow with the bank",
                f"- output: {bigs[0]['file_mib']:,.0f} MiB of Parquet parts (lz4)",
                "",
            ]
    return lines


def bench_features(runs: int, online_customers: int, big: int) -> list[str]:
    """Online apply throughput, state size, offline training-set build time."""
    import numpy as np
    import polars as pl

    from features import CustomerState, build_training_set, scan_log
    from features.events import events_from_frame
    from simulator import SimConfig, write_parquet

    lines = ["## Feature engine", ""]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "online.parquet"
        write_parquet(SimConfig(customers=online_customers, months=24, seed=7), out)
        log = pl.read_parquet(out).sort("customer_id", "occurred_at")
        events = list(events_from_frame(log))
        rates, noop = [], []
        for _ in range(runs):
            began = time.perf_counter()
            seen: dict[str, int] = {}
            for ev in events:
                seen[ev.customer_id] = seen.get(ev.customer_id, 0) + 1
            noop.append(len(events) / (time.perf_counter() - began))
            states: dict[str, CustomerState] = {}
            began = time.perf_counter()
            for ev in events:
                st = states.get(ev.customer_id)
                if st is None:
                    st = states[ev.customer_id] = CustomerState(ev.customer_id)
                st.apply(ev)
            rates.append(len(events) / (time.perf_counter() - began))
        sizes = np.array([len(s.to_bytes()) for s in states.values()])
        records = np.array([len(s.records) for s in states.values()])
        lines += [
            f"Online `CustomerState.apply` on one core, no Kafka: {len(events):,} decoded events of "
            f"{online_customers:,} customers over 24 months, median of {runs} runs:",
            "",
            f"- **{statistics.median(rates):,.0f} events/s** (runs: "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + f"); a loop that only counts events per customer runs at {statistics.median(noop):,.0f}/s "
            f"(ratio {statistics.median(rates) / statistics.median(noop):.3f})",
            f"- state size after 24 months, serialised: median **{np.median(sizes):,.0f} bytes**, "
            f"p99 {np.percentile(sizes, 99):,.0f} bytes, max {sizes.max():,} "
            f"(median {np.median(records):.0f} events kept for the 180-day window)",
            "",
        ]
        if big:
            big_out = Path(tmp) / "big.parquet"
            write_parquet(SimConfig(customers=big, months=24, seed=7), big_out)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            began = time.perf_counter()
            ts = build_training_set(scan_log(big_out), date(2024, 7, 1), date(2025, 6, 1), 30)
            seconds = time.perf_counter() - began
            peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, before) / 1024
            lines += [
                f"Offline training set (`churn features build --start 2024-07-01 --end 2025-06-01 "
                f"--every 30d`) from the 24-month log of {big:,} customers, one run:",
                "",
                f"- {ts.frame.height:,} rows x {len(ts.frame.columns)} columns, "
                f"{ts.frame['as_of'].n_unique()} snapshots in **{seconds:.0f} s**; peak memory "
                f"{peak:,.0f} MiB in the main process (customers in chunks of 8,000 on 2 worker processes)",
                "",
            ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--online-customers", type=int, default=2_000)
    parser.add_argument("--only", nargs="+", default=["simulator", "features"])
    parser.add_argument(
        "--big", type=int, default=100_000, help="customers of the big run (0: skip)"
    )
    args = parser.parse_args()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python -m bench.run`) on {now}.",
        f"Machine: {_machine()}. Shared and noisy: compare ratios measured in the same run.",
        "",
    ]
    if "simulator" in args.only:
        lines += bench_simulator(args.runs, args.big)
    if "features" in args.only:
        lines += bench_features(args.runs, args.online_customers, args.big)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
