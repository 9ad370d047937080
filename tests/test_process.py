"""The worker's process settings (``stream._worker.settle_process``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from stream._worker import GC_THRESHOLDS

_PROBE = """
import gc, json
import numpy as np
from threadpoolctl import threadpool_info
import stream._worker as w
before = {l["filepath"]: (l["internal_api"], l["num_threads"]) for l in threadpool_info()}
w.settle_process()
import training._bundle  # as loading a model does
pools = w.thread_pools()
after = {l["filepath"]: (l["internal_api"], l["num_threads"]) for l in threadpool_info()}
a = np.arange(680 * 29, dtype=np.float64).reshape(680, 29)
print(json.dumps({"before": before, "after": after, "pools": pools,
                  "product": float((a @ np.ones((29, 7))).sum()), "expected": float(a.sum() * 7),
                  "thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_a_worker_holds_the_numeric_thread_pools_to_one_thread_and_sets_its_collector() -> None:
    """A worker is one event loop on one core: OpenBLAS's helper threads spinning
    after each small matrix product took CPU from it. Its own process, with the pools
    set to 4 threads by the environment, so that the limit shows on any machine
    (OpenMP's take 4; OpenBLAS's take at most one a core)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "4", "OMP_NUM_THREADS": "4"}
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(run.stdout)
    assert [api for api, _ in got["before"].values()] == ["openblas"]  # numpy's, at import
    assert got["before"] != got["after"]
    # numpy's and scipy's OpenBLAS, LightGBM's OpenMP (which would take 4), all at one
    assert sorted(api for api, _ in got["after"].values()) == [
        "openblas",
        "openblas",
        "openmp",
        "openmp",
    ]
    assert all(n == 1 for _, n in got["after"].values())
    assert sorted(got["pools"]) == sorted(
        f"{api} {os.path.basename(path)}: 1" for path, (api, _) in got["after"].items()
    )
    assert got["product"] == got["expected"]
    assert tuple(got["thresholds"]) == GC_THRESHOLDS
    assert got["frozen"] > 10_000  # the imported modules are out of the full passes
