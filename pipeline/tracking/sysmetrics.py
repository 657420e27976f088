"""System metrics for a run, sampled locally and logged through its spool."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable

from pipeline.errors import first_line

SYSTEM_PREFIX = "system/"  # MLflow's system metrics (its run page's "System metrics" tab)


def wanted() -> bool:
    """MLflow's own switch, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, turns them off when set to false."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() not in ("false", "0")


class SystemMetrics:
    """MLflow's system metrics (CPU and memory, disk, network; NVIDIA or AMD GPUs where their libraries are
    installed), sampled by MLflow's own collectors on a daemon thread every `seconds` (MLflow's
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins), averaged, and logged as `system/<name>` at steps 0, 1, ...

    MLflow's `SystemMetricsMonitor` would log them with a client of its own: with the server away it blocks at the
    end of the run and gives up for good on its first failed call. Here the samples go into the run's spool like
    every other record, so an outage only delays them, and nothing waits on the network: not the training thread,
    not `stop`."""

    def __init__(self, put: Callable[..., None], seconds: float, first_step: int = 0):
        self._put, self._step = put, first_step
        env = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        self.seconds = float(env) if env else seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)
        self._thread.start()

    @staticmethod
    def _monitors() -> list:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        for module, name in (("gpu_monitor", "GPUMonitor"), ("rocm_monitor", "ROCMMonitor")):  # as MLflow picks
            with contextlib.suppress(Exception):  # no GPU, or no nvidia-ml-py / pyrsmi
                monitors.append(getattr(importlib.import_module(f"mlflow.system_metrics.metrics.{module}"), name)())
                break
        return monitors

    def _run(self) -> None:
        try:
            monitors = self._monitors()  # imports on this thread: the caller never waits for them
            while True:
                for m in monitors:
                    m.collect_metrics()
                stopping = self._stop.wait(self.seconds)
                values = {k: v for m in monitors for k, v in m.aggregate_metrics().items()}
                for m in monitors:
                    m.clear_metrics()
                now = int(time.time() * 1000)
                self._put("metrics", points=[[SYSTEM_PREFIX + k, float(v), now, self._step] for k, v in values.items()])
                self._step += 1
                if stopping:
                    return
        except Exception as e:  # noqa: BLE001 - a broken collector must never reach training
            print(f"WARNING: system metrics stopped: {type(e).__name__}: {first_line(e)}", file=sys.stderr)

    def stop(self, timeout: float = 5.0) -> None:
        """Take the last sample and stop (waits at most `timeout` s: sampling is local, never the network)."""
        self._stop.set()
        self._thread.join(timeout)
