"""A realistic simulated bank: customers, their behaviour, churn and its precursors.

Imports only :mod:`features` (for the event schema).
"""

from simulator._config import SimConfig
from simulator._output import DIRTY_KINDS, ParquetDataset, Sink, log_arrow_schema
from simulator._run import SimSummary, simulate, truth_dir_for, write_parquet

__all__ = [
    "DIRTY_KINDS",
    "ParquetDataset",
    "SimConfig",
    "SimSummary",
    "Sink",
    "log_arrow_schema",
    "simulate",
    "truth_dir_for",
    "write_parquet",
]
