"""Import throughput: a bank-style CSV of N rows into the event log.

``python -m bench.importer [--rows 10000000]`` writes the extract to a temporary
directory (';'-separated, local times, decimal-comma amounts, type codes, no
transaction reference: ids are generated), imports it with ``churn import`` in a
child process (so its peak RSS is the importer's alone) and prints a Markdown
section. Throughput is rows of the extract per second of the import itself (as the
importer reports it: from reading the mapping's sources to closing the event log);
the wall time of the whole command, Python's start-up included, is shown beside it.
Writing the extract is not measured.

Beside each import, in the same run, a baseline: polars' own streaming conversion
of the same CSV to Parquet with every column left as text (``scan_csv`` then
``sink_parquet``: no checks, no types, no ids, no rejects), also in a child process
and timed inside it. The ratio (ours / baseline) says what the checks, types, time
zones and ids cost on top of reading and writing the bytes, whatever the machine's
load.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.run import _machine

MAPPING = """\
source: {delimiter: ";"}
customer_id: KUNDE
id_prefix: bench
occurred_at: {column: ZEIT, format: "%d.%m.%Y %H:%M:%S", timezone: Asia/Shanghai}
event_type: {column: CODE, map: {KAUF: card_payment, BAR: cash_withdrawal}}
amount: {column: BETRAG, decimal: ",", absolute: true}
currency: {value: CNY}
balance: {column: SALDO, decimal: ","}
fields:
  merchant_category: {column: MCC, map: {"5411": groceries, "5812": dining}, default: other}
  channel: {column: KANAL, map: {POS: pos, NFC: contactless, ATM: atm}}
"""


def write_extract(path: Path, rows: int, chunk: int = 1_000_000, seed: int = 7) -> None:
    """A bank-style CSV; about 1% of rows are dirty (bad dates, amounts, codes)."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        f.write(b"KUNDE;ZEIT;CODE;BETRAG;SALDO;MCC;KANAL\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            t = 1_704_067_200 + rng.integers(0, 730 * 86_400, n)
            cash = rng.random(n) < 0.2
            frame = pl.DataFrame(
                {
                    "KUNDE": pl.Series(rng.integers(0, 500_000, n)).cast(pl.String),
                    "ZEIT": pl.Series(t * 1_000_000).cast(pl.Datetime("us", "UTC")),
                    "cash": cash,
                    "cents": rng.integers(1, 500_000, n),
                    "bal": rng.integers(-50_000, 5_000_000, n),
                    "MCC": rng.choice(["5411", "5812", "4511"], n),
                    "dirty": rng.random(n),
                }
            )
            out = frame.select(
                pl.concat_str(pl.lit("C"), pl.col("KUNDE").str.zfill(7)).alias("KUNDE"),
                pl.col("ZEIT")
                .dt.convert_time_zone("Asia/Shanghai")
                .dt.strftime("%d.%m.%Y %H:%M:%S")
                .alias("ZEIT"),
                pl.when(pl.col("dirty") < 0.003)
                .then(pl.lit("XX"))
                .when(pl.col("cash"))
                .then(pl.lit("BAR"))
                .otherwise(pl.lit("KAUF"))
                .alias("CODE"),
                pl.when(pl.col("dirty").is_between(0.003, 0.006))
                .then(pl.lit("n/a"))
                .otherwise(
                    pl.concat_str(
                        pl.lit("-"),
                        (pl.col("cents") // 100).cast(pl.String),
                        pl.lit(","),
                        (pl.col("cents") % 100).cast(pl.String).str.zfill(2),
                    )
                )
                .alias("BETRAG"),
                pl.concat_str(
                    (pl.col("bal") // 100).cast(pl.String),
                    pl.lit(","),
                    (pl.col("bal") % 100).cast(pl.String).str.zfill(2),
                ).alias("SALDO"),
                pl.when(pl.col("cash")).then(None).otherwise(pl.col("MCC")).alias("MCC"),
                pl.when(pl.col("cash")).then(pl.lit("ATM")).otherwise(pl.lit("NFC")).alias("KANAL"),
            )
            out.write_csv(f, separator=";", include_header=False)


def _import_once(src: Path, mapping: Path, out: Path) -> dict[str, float | str]:
    """One ``churn import`` in a child process: its own time, wall, CPU, peak RSS."""
    load = os.getloadavg()[0]  # other work on the machine, as the import starts
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "churn",
            "import",
            "--source",
            str(src),
            "--mapping",
            str(mapping),
            "--out",
            str(out),
            "--max-reject-rate",
            "0.05",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    # the importer's own time: "<seconds> s (<rate> rows/s); events: ..."
    timed = re.search(r"^([0-9.]+) s \(", proc.stdout, re.MULTILINE)
    return {
        "took": float(timed.group(1)) if timed else seconds,
        "wall": seconds,
        "cpu": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak": usage.ru_maxrss / 1024,  # the largest child so far, MiB
        "load": load,
        "out": out.stat().st_size / 2**20,
        "summary": proc.stdout,
    }


_BASELINE = """
import sys, time
import polars as pl
began = time.perf_counter()
pl.scan_csv(sys.argv[1], separator=";", infer_schema=False).sink_parquet(sys.argv[2])
print(time.perf_counter() - began)
"""


def _baseline_once(src: Path, out: Path) -> float:
    """Seconds of polars' own CSV-to-Parquet conversion (all text), in a child process."""
    proc = subprocess.run(
        [sys.executable, "-c", _BASELINE, str(src), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(proc.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3, help="imports of the same extract")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        src, mapping = root / "extract.csv", root / "mapping.yaml"
        mapping.write_text(MAPPING, encoding="utf-8")
        began = time.perf_counter()
        write_extract(src, args.rows)
        size = src.stat().st_size
        print(
            f"wrote {args.rows:,} rows ({size / 2**20:,.0f} MiB) in "
            f"{time.perf_counter() - began:.1f} s",
            file=sys.stderr,
        )
        runs = []
        try:
            for _ in range(args.runs):  # side by side: the baseline, then ours
                baseline = _baseline_once(src, root / "text.parquet")
                runs.append(_import_once(src, mapping, root / "events.parquet"))
                runs[-1]["baseline"] = baseline
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
    print(f"## Import (`python -m bench.importer --rows {args.rows} --runs {args.runs}`)\n")
    print(f"Machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.\n")
    print(
        f"Extract: {args.rows:,} rows, {size / 2**20:,.0f} MiB; event log "
        f"{float(runs[-1]['out']):,.0f} MiB.\n"
    )
    print(
        "| run | import s | rows/s | wall s (incl. start-up) | rows/s (wall) "
        "| CPU s (all threads) | peak RSS | load (1 min) | baseline s | baseline rows/s "
        "| ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(runs, 1):
        took, wall, base = float(r["took"]), float(r["wall"]), float(r["baseline"])
        print(
            f"| {i} | {took:.2f} | {args.rows / took:,.0f} | {wall:.2f} | "
            f"{args.rows / wall:,.0f} | {float(r['cpu']):.1f} | {float(r['peak']):,.0f} MiB | "
            f"{float(r['load']):.2f} | {base:.2f} | {args.rows / base:,.0f} | "
            f"{base / took:.2f} |"
        )
    took = float(np.median([float(r["took"]) for r in runs]))
    wall = float(np.median([float(r["wall"]) for r in runs]))
    base = float(np.median([float(r["baseline"]) for r in runs]))
    ratio = float(np.median([float(r["baseline"]) / float(r["took"]) for r in runs]))
    print(
        f"| **median** | **{took:.2f}** | **{args.rows / took:,.0f}** | {wall:.2f} | "
        f"{args.rows / wall:,.0f} | | | | {base:.2f} | {args.rows / base:,.0f} | "
        f"**{ratio:.2f}** |"
    )
    print("\n```\n" + str(runs[-1]["summary"]).strip() + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
