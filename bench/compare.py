"""Worker settings side by side: pipeline throughput under several configurations and
the no-op faust agent, each run on a fresh broker holding the same records.

``python -m bench.compare --config per-batch:CHURN_FLUSH_SECONDS=0 --config
write-behind:CHURN_FLUSH_SECONDS=1 [--customers 600] [--runs 2]`` prints a Markdown
table: records/s per configuration and run, medians, and each median's ratio to the
no-op agent's (the order of the configurations rotates between runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.run import _machine
from bench.stream import (
    _drain,
    _free_port,
    _noop_drain,
    train_champion,
)
from simulator import SimConfig, write_parquet
from stream import Broker, load_replay, replay

FAUST_NOOP = "no-op, stock faust"


def _config(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = {}
    for part in filter(None, assignments.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.startswith("CHURN_"):
            raise argparse.ArgumentTypeError(f"{part!r}: expected CHURN_NAME=VALUE")
        env[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:CHURN_X=V[,CHURN_Y=W]")
    return name, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=_config, action="append", required=True)
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--faust-noop",
        action="store_true",
        help="also run the no-op reading as stock faust does (its delivery and take_events)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    train_champion(work)
    log = work / "events.parquet"
    write_parquet(SimConfig(customers=args.customers, months=12, seed=5), log, workers=1)
    frame = load_replay(log)
    total = frame.height
    noops = ["no-op", *([FAUST_NOOP] if args.faust_noop else [])]
    names = [*noops, *(name for name, _ in args.config)]
    envs = dict(args.config)
    rates: dict[str, list[float]] = {name: [] for name in names}
    scored: dict[str, list[int]] = {name: [] for name in names}
    for run in range(args.runs):
        k = run % len(names)
        for name in names[k:] + names[:k]:
            if name not in noops:
                rate, emitted = _drain(work, frame, f"{name}{run}", **envs[name])
                rates[name].append(rate)
                scored[name].append(emitted)
            else:
                with Broker(_free_port(), log=work / f"broker-{name}{run}.log") as broker:
                    bootstrap = broker.url.removeprefix("kafka://")
                    replay(bootstrap, "bank.events", frame)
                    faust = name == FAUST_NOOP
                    own = work / f"noop{'-faust' if faust else ''}{run}"  # its data, work.json
                    rates[name].append(_noop_drain(broker, own, total, stock=faust))
            print(f"run {run + 1}: {name} {rates[name][-1]:,.0f}/s", file=sys.stderr)
    noop = statistics.median(rates["no-op"])
    stock = statistics.median(rates[FAUST_NOOP]) if args.faust_noop else None
    print(
        f"\n## Worker settings side by side (`python -m bench.compare {' '.join(sys.argv[1:])}`)\n"
    )
    print(f"{_machine()}; {datetime.now(UTC).date()}; broker: Tansu 0.6 (memory), one worker.\n")
    print(f"Log: {total:,} records ({args.customers} customers x 12 months), all live.\n")
    extra = f" | vs {FAUST_NOOP}" if stock else ""
    print(
        f"| configuration | settings | records/s (runs) | median | vs no-op{extra} | scores emitted |"
    )
    print("|---|---|---|---|---|---|" + ("---|" if stock else ""))
    for name in names:
        settings = ", ".join(f"`{k}={v}`" for k, v in envs.get(name, {}).items()) or "-"
        runs = ", ".join(f"{x:,.0f}" for x in rates[name])
        med = statistics.median(rates[name])
        emitted = ", ".join(f"{x:,}" for x in scored[name]) or "-"
        vs_stock = f" | {med / stock:.3f}" if stock else ""
        print(
            f"| {name} | {settings} | {runs} | **{med:,.0f}** | {med / noop:.3f}{vs_stock}"
            f" | {emitted} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
