"""``churn``: one entry point, subcommands. It parses arguments and calls the packages."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churn._settings import Settings, env_help
from features.errors import ChurnEngineError, ConfigError

if TYPE_CHECKING:
    from features import LabelConfig
    from stream import WorkerConfig
    from training import Store

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
    # aiokafka says "Updating subscribed topics" at INFO for every short-lived consumer
    # (lag checks, topic reads): it drowns the progress lines
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    _configured = True


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _fraction(text: str, most: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= most:
        raise argparse.ArgumentTypeError(f"expected 0.0..{most}, got {value}")
    return value


def _share(text: str) -> float:
    return _fraction(text, 1.0)


def _rate(text: str) -> float:
    return _fraction(text, 0.5)


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
        "--shift",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="population shift: this share of customers disengages in the last --shift-days "
        "(salaries redirected, balances drained to other banks, products closed, logins and "
        "card use fading); to see drift monitoring at work",
    )
    sim.add_argument(
        "--shift-days",
        type=_positive_int,
        default=30,
        help="how long before the end the shift starts (default 30)",
    )
    sim.add_argument(
        "--workers", type=_positive_int, default=None, help="processes (default: cores)"
    )

    schema = sub.add_parser("schema", help="print or check the published JSON Schema of events")
    schema.add_argument("--out", type=Path, help="write it here instead of stdout")
    schema.add_argument("--check", type=Path, help="exit 1 if this file differs from the code")

    imp = sub.add_parser(
        "import", help="import bank extracts (CSV, fixed-width, Parquet, JSON lines) as events"
    )
    imp.add_argument(
        "--source", required=True, help="extract file(s), comma-separated: FILE[,FILE...]"
    )
    imp.add_argument("--mapping", type=Path, required=True, help="mapping file (YAML)")
    imp.add_argument("--out", type=Path, required=True, help="event log to write (.parquet)")
    imp.add_argument(
        "--rejects", type=Path, default=None, help="rejected rows (CSV; default <out>.rejects.csv)"
    )
    imp.add_argument(
        "--max-reject-rate",
        type=float,
        default=0.01,
        help="exit 1 when more than this share of rows is rejected (default 0.01)",
    )
    imp.add_argument(
        "--to-kafka", action="store_true", help="then produce the events into bank.events"
    )
    imp.add_argument(
        "--backfill", action="store_true", help="with --to-kafka: mark as history (not scored)"
    )

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
    _label_args(build)
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

    train = sub.add_parser(
        "train", help="train the churn and value models, evaluate, register a challenger"
    )
    train.add_argument("--events", type=Path, help="event log (Parquet file or dataset)")
    train.add_argument("--train-set", type=Path, help="reuse a built training set (.parquet)")
    train.add_argument("--start", type=_date, help="first as-of date (default: 180 days in)")
    train.add_argument(
        "--end", type=_date, help="last as-of date (default: one horizon before the end)"
    )
    train.add_argument("--every", type=_days, default=30, help="days between snapshots, e.g. 30d")
    _label_args(train)
    train.add_argument(
        "--truth", type=Path, help="simulator ground truth (default: <events>.truth)"
    )
    train.add_argument(
        "--seed", type=int, default=7, help="random seed (same seed, same model files)"
    )
    train.add_argument("--threads", type=_positive_int, default=2, help="LightGBM threads")
    train.add_argument("--save-train-set", type=Path, help="also write the training set here")
    train.add_argument(
        "--no-register", action="store_true", help="train and evaluate only; register nothing"
    )
    train.add_argument("--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR")

    prom = sub.add_parser("promote", help="make the challenger the champion if it is not worse")
    prom.add_argument(
        "--tolerance", type=float, default=0.005, help="allowed loss of ROC-AUC / gain of ECE"
    )
    prom.add_argument("--force", action="store_true", help="promote even if the checks fail")
    prom.add_argument("--reason", help="why (required with --force; recorded on the version)")
    prom.add_argument("--by", help="who promotes (default: the login name)")
    prom.add_argument("--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR")

    models = sub.add_parser("models", help="list model versions, aliases and key metrics")
    models.add_argument("--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR")

    broker = sub.add_parser("broker", help="run the local Kafka-compatible broker (Ctrl-C stops)")
    broker.add_argument(
        "--port", type=_positive_int, default=None, help="default: $CHURN_BROKER_PORT"
    )

    worker = sub.add_parser("worker", help="run a streaming worker (faust)")
    worker.add_argument(
        "--web-port", type=_positive_int, default=None, help="default: $CHURN_WEB_PORT"
    )
    worker.add_argument("--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR")

    rep = sub.add_parser("replay", help="produce an event log into bank.events")
    rep.add_argument(
        "--events", type=Path, required=True, help="event log (Parquet file or dataset)"
    )
    rep.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    rep.add_argument("--since", type=_date, default=None, help="only events from this date")
    rep.add_argument("--until", type=_date, default=None, help="only events before this date")
    rep.add_argument(
        "--backfill", action="store_true", help="mark as history: folded into state, not scored"
    )

    sub.add_parser(
        "notify", help="send alert digests to managers (topic, webhook, e-mail); Ctrl-C stops"
    )
    sub.add_parser("serve", help="the managers' inbox: web pages and JSON API (Ctrl-C stops)")
    sub.add_parser("token", help="make a new manager token and the hash for the managers file")
    drift = sub.add_parser(
        "drift-report", help="score and feature drift of the workers' live windows, as HTML"
    )
    drift.add_argument(
        "--worker",
        action="append",
        metavar="URL",
        help="a worker's web address (repeat for each; default http://127.0.0.1:$CHURN_WEB_PORT)",
    )
    drift.add_argument(
        "--window", type=_days, default=None, help="only the newest days, e.g. 3d (default: all)"
    )
    drift.add_argument("--out", type=Path, default=Path("drift-report.html"))
    live = sub.add_parser(
        "evaluate-live", help="AUC, calibration and lift of emitted scores once churn matured"
    )
    live.add_argument("--events", type=Path, required=True, help="the event log (Parquet)")
    live.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="scores as JSON lines (default: read the customer.scores topic)",
    )
    _label_args(live)
    live.add_argument("--out", type=Path, default=None, help="write the months as JSON")
    live.add_argument(
        "--prom", type=Path, default=None, help="write churn_live_* gauges (Prometheus text file)"
    )
    pol = sub.add_parser("policy", help="the alert policy: print the default, check a file")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    psub.add_parser("show", help="print the built-in default policy (a commented example)")
    check = psub.add_parser("check", help="validate a policy file and summarise its rules")
    check.add_argument("file", type=Path)

    demo = sub.add_parser("demo", help="the main job on embedded defaults")
    _simulation_args(demo, customers=20_000)
    demo.add_argument(
        "--data-dir", type=Path, default=None, help="default: $CHURN_DATA_DIR or data/"
    )
    demo.add_argument(
        "--live-customers", type=_positive_int, default=500, help="customers streamed live"
    )
    demo.add_argument("--rate", type=float, default=100.0, help="live events per second")
    demo.add_argument(
        "--no-live", action="store_true", help="stop after training (no broker, no worker)"
    )
    return parser


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--horizon", type=_days, default=90, help="churn horizon, e.g. 90d")
    p.add_argument(
        "--churn-definition",
        choices=["last_product", "inactivity"],
        default="last_product",
        help="churn = last product closed, or N days without customer activity",
    )
    p.add_argument(
        "--inactivity-days", type=_days, default=90, help="for --churn-definition inactivity"
    )
    p.add_argument(
        "--value-days", type=_days, default=365, help="period of the value label, e.g. 365d"
    )


def _labels(args: argparse.Namespace) -> LabelConfig:
    from features import LabelConfig

    return LabelConfig(
        horizon_days=args.horizon,
        churn_definition=args.churn_definition,
        inactivity_days=args.inactivity_days,
        value_days=args.value_days,
    )


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
        shift_share=args.shift,
        shift_days=args.shift_days,
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


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from features import import_events, load_mapping

    if not 0.0 <= args.max_reject_rate <= 1.0:
        raise ConfigError("--max-reject-rate", args.max_reject_rate, "a share 0.0..1.0")
    mapping = load_mapping(args.mapping)
    if args.to_kafka and mapping.lacks_balance():
        raise ConfigError(
            "balance",
            None,
            "a balance column with --to-kafka: the published event schema requires "
            "balance_minor on money events (without it, events are for training only)",
        )
    sources = [Path(p.strip()) for p in args.source.split(",") if p.strip()]
    report = import_events(sources, mapping, args.out, args.rejects)
    print(report.format())
    if report.reject_rate > args.max_reject_rate:
        print(
            f"churn import: {report.reject_rate:.2%} of rows rejected, more than "
            f"--max-reject-rate {args.max_reject_rate:.2%}",
            file=sys.stderr,
        )
        return 1
    if args.to_kafka:
        from stream import load_replay, replay

        frame = load_replay(args.out)
        bootstrap = kafka_bootstrap(settings)
        print(f"producing {frame.height:,} events into bank.events at {bootstrap} ...")
        result = replay(
            bootstrap, "bank.events", frame, None, args.backfill, partitions=settings.partitions
        )
        print(f"sent {result.sent:,} records in {result.seconds:.1f} s ({result.rate:,.0f}/s)")
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

    from features import FEATURES, build_training_set, check_parity, scan_log

    if args.features_command == "list":
        for f in FEATURES:
            print(f"{f.name:<32} {f.unit:<20} {f.description}")
        print(f"{len(FEATURES)} features")
        return 0
    log = scan_log(args.events)
    if args.features_command == "build":
        result = build_training_set(
            log, args.start, args.end, args.every, _labels(args), progress=_progress
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

    import getpass
    from datetime import UTC, datetime

    from features import LabelConfig
    from training import Store, TrainConfig, TrainJob, promote, run_training

    store = Store.resolve(data_dir)
    print(f"\nTraining the churn and value models (tracking: {store.describe()}) ...")
    job = TrainJob(
        events=out,
        train_set=None,
        labels=LabelConfig(),
        config=TrainConfig(seed=args.seed),
        save_train_set=data_dir / "train.parquet",
    )
    now = datetime.now(UTC)
    run_training(job, store, now=now, code_version=code_version(), chunk_progress=_progress)
    print()
    print(promote(store, who=getpass.getuser(), now=now).format())
    if args.no_live:
        return 0
    from churn._demo import DemoConfig, run_live

    return run_live(
        DemoConfig(
            events=out,
            data_dir=data_dir,
            live_customers=min(args.live_customers, cfg.customers),
            rate=args.rate,
            broker_port=settings.broker_port,
            web_port=settings.web_port,
            seed=args.seed,
        )
    )


def code_version() -> str:
    """The git commit of the code (``+dirty`` if modified), else the package version."""
    import subprocess
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version("churn-engine")
    return sha + ("+dirty" if dirty else "")


def _store(args: argparse.Namespace, settings: Settings) -> Store:
    from training import Store

    return Store.resolve(args.data_dir or settings.data_dir)


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from training import TrainConfig, TrainJob, run_training

    if args.events is None and args.train_set is None:
        raise ChurnEngineError("give --events (an event log) or --train-set (a built training set)")
    if args.events is not None and not args.events.exists():
        raise ChurnEngineError(f"no event log at {args.events}")
    store = _store(args, settings)
    job = TrainJob(
        events=args.events,
        train_set=args.train_set,
        labels=_labels(args),
        config=TrainConfig(seed=args.seed, threads=args.threads),
        start=args.start,
        end=args.end,
        every_days=args.every,
        truth_dir=args.truth,
        save_train_set=args.save_train_set,
        register=not args.no_register,
    )
    print(f"tracking: {store.describe()}")
    run_training(
        job, store, now=datetime.now(UTC), code_version=code_version(), chunk_progress=_progress
    )
    return 0


def _cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    import getpass
    from datetime import UTC, datetime

    from training import promote

    result = promote(
        _store(args, settings),
        tolerance=args.tolerance,
        force=args.force,
        reason=args.reason,
        who=args.by or getpass.getuser(),
        now=datetime.now(UTC),
    )
    print(result.format())
    return 0 if result.promoted else 1


def _cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from training import list_models

    store = _store(args, settings)
    rows = list_models(store)
    if not rows:
        print(f"no registered versions of {store.model_name} in {store.describe()}")
        return 0
    print(
        f"{'version':>7}  {'aliases':<22}{'created (UTC)':<18}{'AUC':>7}{'PR-AUC':>8}"
        f"{'ECE':>8}{'AUC/oracle':>11}{'value MAE':>12}  features"
    )
    for r in rows:
        print(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22}"
            f"{r['created']:%Y-%m-%d %H:%M}  "
            f"{r.get('test.churn.roc_auc', float('nan')):>7.4f}"
            f"{r.get('test.churn.pr_auc', float('nan')):>8.4f}"
            f"{r.get('test.churn.ece', float('nan')):>8.4f}"
            f"{r.get('test.churn.auc_over_oracle', float('nan')):>11.4f}"
            f"{r.get('test.value.mae', float('nan')) / 100:>12,.2f}  {r['feature_fingerprint']}"
        )
    return 0


def kafka_bootstrap(settings: Settings) -> str:
    """host:port of the broker: $CHURN_KAFKA_URL, else the local dev broker's port."""
    url = settings.kafka_url or f"kafka://127.0.0.1:{settings.broker_port}"
    return url.removeprefix("kafka://")


def worker_config(settings: Settings, data_dir: Path, web_port: int | None = None) -> WorkerConfig:
    from stream import WorkerConfig
    from training import Store

    return WorkerConfig(
        broker_url="kafka://" + kafka_bootstrap(settings),
        store=settings.store,
        partitions=settings.partitions,
        tracking_uri=Store.resolve(data_dir).tracking_uri,
        model_poll_seconds=settings.model_poll_seconds,
        alert_policy=settings.alert_policy,
        batch_size=settings.batch_size,
        batch_within=settings.batch_within,
        cache_size=settings.state_cache,
        flush_seconds=settings.flush_seconds,
        catchup_seconds=settings.catchup_seconds,
        catchup_flush_seconds=settings.catchup_flush_seconds,
        fetch_wait_ms=settings.fetch_wait_ms,
        monitoring=settings.monitoring,
        drift_window_days=settings.drift_window_days,
        web_port=web_port or settings.web_port,
        data_dir=str(data_dir / "worker"),
    )


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import time

    from stream import Broker

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # stop the broker process too, no orphan
    with Broker(args.port or settings.broker_port) as b:
        print(f"broker listening on {b.url} (memory storage); Ctrl-C stops it", flush=True)
        while b.proc is not None and b.proc.poll() is None:
            time.sleep(0.5)
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from serving import DEFAULT_POLICY, load_policy
    from serving._policy import human

    if args.policy_command == "show":
        print(DEFAULT_POLICY, end="")
        return 0
    pol = load_policy(args.file)
    on = "on" if pol.inhibit else "off"
    print(f"{args.file}: valid; cooldown {human(pol.cooldown)}, inhibition {on}")
    for rule in pol.rules:
        cool = human(pol.cooldown_of(rule))
        print(f"  {rule.name:<24} {rule.kind:<22} {rule.severity:<9} cooldown {cool}")
    return 0


def notify_config(settings: Settings) -> Any:
    """The notifier's configuration from the settings (secrets from the environment)."""
    from serving import load_policy
    from serving._delivery import EmailConfig, WebhookConfig
    from serving._notify import RoutingConfig
    from serving._outbox import NotifyConfig, load_directory

    policy = load_policy(Path(settings.alert_policy) if settings.alert_policy else None)
    r = policy.routing
    webhook = None
    if settings.webhook_url:
        secret = settings.webhook_secret.get_secret_value()
        if not secret:
            raise ConfigError("CHURN_WEBHOOK_SECRET", "", "a secret when CHURN_WEBHOOK_URL is set")
        webhook = WebhookConfig(settings.webhook_url, secret.encode())
    email = None
    if settings.smtp_host:
        email = EmailConfig(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_sender,
            settings.smtp_user or None,
            settings.smtp_password.get_secret_value() or None,
        )
    return NotifyConfig(
        bootstrap=kafka_bootstrap(settings),
        routing=RoutingConfig(r.group_wait, r.group_interval, r.repeat_interval, r.daily_cap),
        webhook=webhook,
        email=email,
        directory=load_directory(Path(settings.managers) if settings.managers else None),
        partitions=settings.partitions,
    )


def _cmd_drift_report(args: argparse.Namespace, settings: Settings) -> int:
    from monitoring._report import write_drift_report

    urls = args.worker or [f"http://127.0.0.1:{settings.web_port}"]
    try:
        merged = write_drift_report(urls, args.out, days=args.window, now=datetime.now(UTC))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"churn drift-report: {exc}", file=sys.stderr)
        return 1
    print(f"{'column':32} {'PSI':>7} {'KS':>6} {'n':>7}")
    for d in merged["drift"][:12]:
        print(f"{d['column']:32} {d['psi']:7.3f} {d['ks']:6.3f} {d['n']:7d}")
    print(f"\nreport: {args.out}")
    return 0


def _cmd_evaluate_live(args: argparse.Namespace, settings: Settings) -> int:
    from features import scan_log
    from monitoring._live import evaluate_live, format_table, scores_frame, write_outputs

    if args.scores is not None:
        records = [line for line in args.scores.read_bytes().splitlines() if line.strip()]
    else:
        from stream import read_topic

        records = [value for _, value in read_topic(kafka_bootstrap(settings), "customer.scores")]
    rows = evaluate_live(scores_frame(records), scan_log(args.events), _labels(args))
    print(format_table(rows))
    write_outputs(rows, args.out, args.prom)
    return 0


def _cmd_notify(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from serving._outbox import NotifyCollector, NotifyCounters, run_notifier

    counts = NotifyCounters()
    if settings.notify_metrics_port:
        from prometheus_client import start_http_server

        from monitoring import registry_of

        registry = registry_of(NotifyCollector(counts))
        try:
            start_http_server(settings.notify_metrics_port, "127.0.0.1", registry)
        except OSError as exc:
            raise ConfigError(
                "CHURN_NOTIFY_METRICS_PORT", settings.notify_metrics_port, f"a free port ({exc})"
            ) from exc
        print(f"metrics on http://127.0.0.1:{settings.notify_metrics_port}/metrics")
    counts = asyncio.run(run_notifier(notify_config(settings), counts=counts))
    print(f"sent {dict(counts.sent)}; failed {dict(counts.failed)}")
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import secrets

    import uvicorn

    from serving._inbox import build_inbox
    from serving._outbox import load_directory

    directory = load_directory(Path(settings.managers) if settings.managers else None)
    if not directory.managers:
        raise ConfigError("CHURN_MANAGERS", settings.managers, "a managers file with tokens")
    key = settings.inbox_secret.get_secret_value().encode()
    if not key:
        logging.getLogger("churn").warning(
            "CHURN_INBOX_SECRET is not set: sessions are signed with a random key and end "
            "when the inbox restarts"
        )
        key = secrets.token_bytes(32)
    app, _ = build_inbox(directory, kafka_bootstrap(settings), key)
    print(f"inbox on http://{settings.inbox_host}:{settings.inbox_port}/ (API docs: /docs)")
    uvicorn.run(app, host=settings.inbox_host, port=settings.inbox_port, log_level="warning")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from serving._inbox import hash_token

    token = secrets.token_urlsafe(24)
    print(f"token (give it to the manager; it is not stored): {token}")
    print(f"for the managers file:  token_sha256: {hash_token(token)}")
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from stream import run_worker

    cfg = worker_config(settings, args.data_dir or settings.data_dir, args.web_port)
    run_worker(cfg, settings.log_level)
    return 0


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime, time

    from stream import load_replay, replay

    if not args.events.exists():
        raise ChurnEngineError(f"no event log at {args.events}")

    def at(d: date | None) -> datetime | None:
        return datetime.combine(d, time(0), tzinfo=UTC) if d else None

    frame = load_replay(args.events, at(args.since), at(args.until))
    bootstrap = kafka_bootstrap(settings)
    print(f"replaying {frame.height:,} records into bank.events at {bootstrap} ...")
    result = replay(
        bootstrap, "bank.events", frame, args.rate, args.backfill, partitions=settings.partitions
    )
    print(f"sent {result.sent:,} records in {result.seconds:.1f} s ({result.rate:,.0f}/s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(os.environ)
        configure_logging(settings.log_level)
        plain = {
            "simulate": _cmd_simulate,
            "schema": _cmd_schema,
            "validate": _cmd_validate,
            "features": _cmd_features,
            "policy": _cmd_policy,
            "token": _cmd_token,
        }
        if args.command in plain:
            return plain[args.command](args)
        with_settings = {
            "train": _cmd_train,
            "promote": _cmd_promote,
            "models": _cmd_models,
            "broker": _cmd_broker,
            "worker": _cmd_worker,
            "notify": _cmd_notify,
            "serve": _cmd_serve,
            "replay": _cmd_replay,
            "import": _cmd_import,
            "drift-report": _cmd_drift_report,
            "evaluate-live": _cmd_evaluate_live,
            "demo": _cmd_demo,
        }
        if args.command in with_settings:
            return with_settings[args.command](args, settings)
    except ChurnEngineError as exc:
        print(f"churn {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits
