"""``churn``: one entry point, subcommands. It parses arguments and calls the packages."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from churn._settings import Settings, env_help
from features.errors import ChurnEngineError

logger = logging.getLogger(__name__)

_configured = False


def configure_logging(level: str) -> None:
    """Plain logging to stderr, once (idempotent)."""
    global _configured
    if _configured:
        return
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _configured = True


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected 0.0..0.5, got {value}")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _days(text: str) -> int:
    value = text.removesuffix("d")
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected days like 30d, got {text!r}") from None
    if days <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of days, got {text!r}")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churn",
        description="Event-sourced churn and loyalty scoring engine for banks.",
        epilog="environment:\n" + env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sim = sub.add_parser("simulate", help="simulate a bank and write its event log (Parquet)")
    _simulation_args(sim)
    sim.add_argument("--out", type=Path, required=True, help="event log to write (.parquet)")
    sim.add_argument(
        "--dirty-rate",
        type=_rate,
        default=0.0,
        help="share of records made dirty: duplicates, late, malformed, unknown types",
    )
    sim.add_argument(
        "--workers", type=_positive_int, default=None, help="processes (default: cores)"
    )

    schema = sub.add_parser("schema", help="print or check the published JSON Schema of events")
    schema.add_argument("--out", type=Path, help="write it here instead of stdout")
    schema.add_argument("--check", type=Path, help="exit 1 if this file differs from the code")

    val = sub.add_parser("validate", help="validate every record of an event log")
    val.add_argument("--events", type=Path, required=True, help="event log (.parquet)")

    feats = sub.add_parser("features", help="feature definitions, training sets, parity")
    fsub = feats.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    fsub.add_parser("list", help="list every feature with its unit and description")
    build = fsub.add_parser("build", help="build a point-in-time training set")
    build.add_argument(
        "--events", type=Path, required=True, help="event log (Parquet file or dataset)"
    )
    build.add_argument("--start", type=_date, required=True, help="first as-of date (YYYY-MM-DD)")
    build.add_argument("--end", type=_date, required=True, help="last as-of date (YYYY-MM-DD)")
    build.add_argument("--every", type=_days, default=30, help="days between snapshots, e.g. 30d")
    build.add_argument("--horizon", type=_days, default=90, help="churn horizon, e.g. 90d")
    build.add_argument(
        "--churn-definition",
        choices=["last_product", "inactivity"],
        default="last_product",
        help="churn = last product closed, or N days without customer activity",
    )
    build.add_argument(
        "--inactivity-days", type=_days, default=90, help="for --churn-definition inactivity"
    )
    build.add_argument(
        "--value-days", type=_days, default=365, help="period of the value label, e.g. 365d"
    )
    build.add_argument("--out", type=Path, required=True, help="training set to write (.parquet)")
    parity = fsub.add_parser(
        "parity", help="replay the log online and compare with offline features"
    )
    parity.add_argument(
        "--events", type=Path, required=True, help="event log (Parquet file or dataset)"
    )
    parity.add_argument(
        "--sample", type=_positive_int, default=None, help="customers to check (default: all)"
    )
    parity.add_argument(
        "--per-customer", type=_positive_int, default=5, help="as-of times per customer"
    )
    parity.add_argument(
        "--seed", type=int, default=0, help="random seed for the sample and as-of times"
    )

    demo = sub.add_parser("demo", help="the main job on embedded defaults")
    _simulation_args(demo, customers=20_000)
    demo.add_argument(
        "--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR or data/"
    )
    return parser


def _simulation_args(p: argparse.ArgumentParser, customers: int = 10_000) -> None:
    p.add_argument("--customers", type=_positive_int, default=customers, help="number of customers")
    p.add_argument("--months", type=_positive_int, default=24, help="months of history")
    p.add_argument("--seed", type=int, default=7, help="random seed (same seed, same bytes)")
    p.add_argument("--start", type=_date, default=date(2024, 1, 1), help="first day (YYYY-MM-DD)")


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // total
        print(
            f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks",
            end="",
            file=sys.stderr,
        )
        if done == total:
            print(file=sys.stderr)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulator import SimConfig, write_parquet

    cfg = SimConfig(
        customers=args.customers,
        months=args.months,
        seed=args.seed,
        start=args.start,
        dirty_rate=args.dirty_rate,
    )
    summary = write_parquet(cfg, args.out, _progress, args.workers)
    print(summary.format())
    print(
        f"\n  events: {args.out}\n  ground truth: {args.out.name.removesuffix('.parquet')}.truth/"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from features.events import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.check:
        if not args.check.exists() or args.check.read_text(encoding="utf-8") != text:
            print(f"{args.check} is out of date: run `make schema`", file=sys.stderr)
            return 1
        print(f"{args.check} is up to date")
        return 0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    import polars as pl

    from features.events import validate_log

    if not args.events.exists():
        raise ChurnEngineError(f"no event log at {args.events}")
    valid, rejected = validate_log(pl.read_parquet(args.events))
    print(f"valid: {valid:,}")
    for reason, count in sorted(rejected.items()):
        print(f"rejected ({reason}): {count:,}")
    return 1 if rejected else 0


def _cmd_features(args: argparse.Namespace) -> int:
    import polars as pl

    from features import FEATURES, LabelConfig, build_training_set, check_parity, scan_log

    if args.features_command == "list":
        for f in FEATURES:
            print(f"{f.name:<32} {f.unit:<20} {f.description}")
        print(f"{len(FEATURES)} features")
        return 0
    log = scan_log(args.events)
    if args.features_command == "build":
        labels = LabelConfig(
            horizon_days=args.horizon,
            churn_definition=args.churn_definition,
            inactivity_days=args.inactivity_days,
            value_days=args.value_days,
        )
        result = build_training_set(
            log, args.start, args.end, args.every, labels, progress=_progress
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.frame.write_parquet(args.out)
        print(result.format())
        print(f"  written: {args.out}")
        return 0
    frame = log.collect()
    if args.sample:
        ids = (
            frame["customer_id"]
            .unique()
            .sort()
            .sample(min(args.sample, frame["customer_id"].n_unique()), seed=args.seed)
        )
        frame = frame.filter(pl.col("customer_id").is_in(ids.implode()))
    report = check_parity(frame, per_customer=args.per_customer, seed=args.seed)
    print(report.format())
    return 1 if report.total_mismatches else 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from simulator import SimConfig, write_parquet

    data_dir = args.data_dir or settings.data_dir
    out = data_dir / "events.parquet"
    cfg = SimConfig(customers=args.customers, months=args.months, seed=args.seed, start=args.start)
    print(f"Simulating {cfg.customers:,} customers over {cfg.months} months into {out} ...")
    summary = write_parquet(cfg, out, _progress)
    print(summary.format())

    from datetime import timedelta

    from features import build_training_set, scan_log

    train_out = data_dir / "train.parquet"
    first = cfg.start + timedelta(days=180)
    last = cfg.end - timedelta(days=91)
    if last >= first:
        print(f"\nBuilding a point-in-time training set ({first} .. {last}, every 30 days) ...")
        ts = build_training_set(scan_log(out), first, last, 30, progress=_progress)
        ts.frame.write_parquet(train_out)
        print(ts.format())
        print(f"  written: {train_out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        configure_logging(settings.log_level)
        if args.command == "simulate":
            return _cmd_simulate(args)
        if args.command == "schema":
            return _cmd_schema(args)
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "features":
            return _cmd_features(args)
        if args.command == "demo":
            return _cmd_demo(args, settings)
    except ChurnEngineError as exc:
        print(f"churn {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits
