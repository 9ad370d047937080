"""The `churn` command line: usage on mistakes, subcommands, settings errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from churn import main
from churn._settings import Settings
from features.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands_and_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("simulate", "schema", "validate", "demo"):
        assert command in out
    assert "CHURN_DATA_DIR" in out


def test_mistakes_print_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--customers", "lots", "--out", "x.parquet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: churn simulate")
    assert "expected a whole number, got 'lots'" in err
    with pytest.raises(SystemExit):
        main(["simulate"])
    assert "--out" in capsys.readouterr().err


def test_schema_check_against_the_published_file() -> None:
    assert main(["schema", "--check", str(ROOT / "docs" / "events.schema.json")]) == 0


def test_schema_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text("{}", encoding="utf-8")
    assert main(["schema", "--check", str(stale)]) == 1


def test_simulate_and_validate_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev.parquet"
    assert (
        main(
            ["simulate", "--customers", "200", "--months", "2", "--out", str(out), "--workers", "1"]
        )
        == 0
    )
    assert "Simulated bank: 200 customers" in capsys.readouterr().out
    assert pl.read_parquet(out).height > 1_000
    assert main(["validate", "--events", str(out)]) == 0
    assert "valid:" in capsys.readouterr().out


def test_missing_event_log_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--events", str(tmp_path / "nope.parquet")]) == 2
    assert "no event log at" in capsys.readouterr().err


def test_settings_name_the_variable_and_allowed_values() -> None:
    assert Settings.from_environ({"CHURN_DATA_DIR": "/srv/churn"}).data_dir == Path("/srv/churn")
    with pytest.raises(ConfigError) as err:
        Settings.from_environ({"CHURN_LOG_LEVEL": "loud"})
    assert err.value.field == "CHURN_LOG_LEVEL"
    assert "'debug', 'info', 'warning' or 'error'" in err.value.allowed


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "churn", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert "simulate" in proc.stdout


def test_demo_simulates_trains_and_promotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["demo", "--customers", "800", "--months", "24", "--data-dir", str(tmp_path)]
    assert main([*args, "--no-live"]) == 0
    out = capsys.readouterr().out
    assert "Simulated bank: 800 customers" in out
    assert "training set:" in out
    assert "registered churn-engine version 1 (alias challenger)" in out
    assert "promoted version 1 to champion" in out
    train = pl.read_parquet(tmp_path / "train.parquet")
    assert {"churn", "value_minor", "logins_30d"} <= set(train.columns)


def test_policy_show_prints_a_valid_policy_and_check_names_bad_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "show"]) == 0
    shown = tmp_path / "policy.yaml"
    shown.write_text(capsys.readouterr().out)
    assert main(["policy", "check", str(shown)]) == 0
    out = capsys.readouterr().out
    assert "valid; cooldown 7d" in out
    assert "complaint_left_open" in out
    assert "cooldown 14d" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n - {name: ab, kind: lifecycle, severity: urgent}\n")
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rules[0].severity='urgent'" in err
    assert "critical, high, medium or low" in err


def test_a_worker_behind_writes_its_states_at_the_catch_up_interval(tmp_path: Path) -> None:
    """The worker's flush interval from the settings: ``CHURN_FLUSH_SECONDS`` while it
    keeps up, ``CHURN_CATCHUP_FLUSH_SECONDS`` while it is behind (never shorter), and
    every micro-batch with a flush interval of 0."""
    from churn._cli import worker_config

    def interval(behind: bool, **environ: str) -> float:
        cfg = worker_config(Settings.from_environ(environ), tmp_path)
        return cfg.flush_interval(behind)

    assert interval(False) == 1.0
    assert interval(True) == 3.0
    assert interval(True, CHURN_CATCHUP_FLUSH_SECONDS="5") == 5.0
    assert interval(True, CHURN_FLUSH_SECONDS="4") == 4.0
    assert interval(False, CHURN_CATCHUP_FLUSH_SECONDS="5") == 1.0
    assert interval(True, CHURN_FLUSH_SECONDS="0") == 0.0
    with pytest.raises(ConfigError, match="CHURN_CATCHUP_FLUSH_SECONDS"):
        Settings.from_environ({"CHURN_CATCHUP_FLUSH_SECONDS": "-1"})
