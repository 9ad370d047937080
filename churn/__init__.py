"""The ``churn`` command line: parses arguments and calls into the packages."""

from churn._cli import build_parser, configure_logging, main

__all__ = ["build_parser", "configure_logging", "main"]
