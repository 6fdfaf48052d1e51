"""Several proxy processes on one HTTP port (``--workers N``).

A Python process serves HTTP on one core at most, and the proxy is the first
process on every request's path. With ``--workers N``, the proxy the
controller started (the lead, worker 0) binds its port with SO_REUSEPORT and
starts N-1 more proxies on the same host and port; the kernel spreads new
connections over the N listening sockets. Each worker:

- follows the controller's routes under its own subscriber id, so an admin
  call returns only once every worker serves the change;
- reports its own counters to the controller under its own reporter id (the
  controller sums them), and shares them with the other workers through a
  file each, so ``/-/metrics`` shows the sum whichever worker answers: counts
  and histogram buckets add up, and so do the gauges (requests queued, in
  flight per replica: each worker's are its own requests);
- logs to files of its own, ``proxy-<n>.log`` beside ``proxy.log``;
- dies with the lead (``--parent-pid``). The lead restarts a worker that exits
  and stops them all when it stops; the controller supervises only the lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from turnout._internal import proxy_args
from turnout._internal.backoff import Backoff
from turnout._internal.counters import sum_reports
from turnout._internal.proxy_args import ProxyArgs
from turnout._internal.spawn import spawn_async
from turnout._sending.stats import RouterStats
from turnout.v1 import controller_pb2 as pb

from .metrics import Counters, Gauges

logger = logging.getLogger(__name__)

# How long a worker may take to start and get its first routing snapshot.
WORKER_READY_TIMEOUT_S = 60.0
# How long a worker told to stop may drain its requests before it is killed.
WORKER_STOP_TIMEOUT_S = 35.0
# Restarts of a worker that keeps exiting wait 0.5 s, 1 s, 2 s... up to this.
WORKER_BACKOFF_INITIAL_S = 0.5
WORKER_BACKOFF_MAX_S = 10.0
# How often a worker writes its counters for the others' /-/metrics.
SHARE_INTERVAL_S = 1.0


def indexed(path: Path, index: int) -> Path:
    """Worker ``index``'s file beside worker 0's: proxy.log -> proxy-2.log."""
    return path if index == 0 else path.with_name(f"{path.stem}-{index}{path.suffix}")


@dataclass(frozen=True)
class WorkerSpec:
    """What the lead tells every worker it starts: its own options, but for
    the port it bound (``--port 0`` means the one the lead got) and the
    files each worker keeps to itself."""

    lead: ProxyArgs
    port: int
    stats_dir: Path

    def argv(self, index: int, ready_fd: int) -> list[str]:
        lead = self.lead
        return proxy_args.command(
            dataclasses.replace(
                lead,
                port=self.port,
                workers=1,
                worker_index=index,
                stats_dir=self.stats_dir,
                parent_pid=os.getpid(),
                ready_fd=ready_fd,
                log_file=None if lead.log_file is None else indexed(lead.log_file, index),
                access_log=None if lead.access_log is None else indexed(lead.access_log, index),
            )
        )


def new_stats_dir() -> Path:
    """A private directory for the workers' shared counters; the lead removes it."""
    return Path(tempfile.mkdtemp(prefix="turnout-proxy-"))


class SharedCounters:
    """This worker's counters and gauges plus the other workers' latest, for /-/metrics.

    Each worker rewrites ``<dir>/<index>.json`` (atomically) about once a
    second when its counters changed; a scrape adds its own live counters to
    the others' files, so what it shows lags the other workers by at most
    that second.
    """

    def __init__(
        self,
        directory: Path,
        index: int,
        stats: RouterStats,
        gauges: Callable[[], Gauges],
    ) -> None:
        self._directory = directory
        self._index = index
        self._stats = stats
        self._gauges = gauges
        self._path = directory / f"{index}.json"

    def _others(self) -> list[tuple[pb.ReportStatsRequest, Gauges]]:
        """The other workers' latest counters and gauges; a file that cannot
        be read (a worker writing its first) is skipped."""
        shares = []
        for path in self._directory.glob("*.json"):
            if path == self._path:
                continue
            report = pb.ReportStatsRequest()
            try:
                share = json.loads(path.read_text())
                json_format.ParseDict(share["report"], report)
                queued = {str(b): int(n) for b, n in share["queued"].items()}
                in_flight = {(str(b), str(r)): int(n) for b, r, n in share["in_flight"]}
            except (OSError, ValueError, KeyError, TypeError, AttributeError, json_format.Error):
                continue
            shares.append((report, (queued, in_flight)))
        return shares

    def read(self) -> Counters:
        """Every worker's counters and gauges, summed: this one's live."""
        reports = [self._stats.to_proto()]
        totals = Counters([], *self._gauges())
        for report, gauges in self._others():
            reports.append(list(report.endpoints))
            totals.add_gauges(*gauges)
        totals.endpoints = sum_reports(reports)
        return totals

    def write(self, gauges: Gauges) -> None:
        report = pb.ReportStatsRequest(endpoints=self._stats.to_proto())
        queued, in_flight = gauges
        share = {
            "report": json_format.MessageToDict(report),
            "queued": queued,
            "in_flight": [[b, r, n] for (b, r), n in in_flight.items()],
        }
        partial = self._path.with_suffix(".tmp")
        partial.write_text(json.dumps(share))
        partial.replace(self._path)

    async def share_forever(self) -> None:
        written = -1
        shared: Gauges | None = None
        while True:
            gauges = self._gauges()
            if self._stats.changes != written or gauges != shared:
                written, shared = self._stats.changes, gauges
                try:
                    self.write(gauges)
                except OSError as exc:
                    logger.warning("cannot share counters in %s: %s", self._directory, exc)
            await asyncio.sleep(SHARE_INTERVAL_S)


class Workers:
    """The lead's workers 1..count-1: started together, restarted when they
    exit, stopped together."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self._spec = spec
        self._count = count
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker and wait until each serves; raises ``RuntimeError``
        (the others stopped again) if one cannot."""
        indices = range(1, self._count)
        results = await asyncio.gather(*(self._start(i) for i in indices), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise RuntimeError(f"a proxy worker did not start: {failures[0]}")
        self._watchers = [asyncio.create_task(self._watch(i)) for i in indices]

    async def _start(self, index: int) -> None:
        spawned = await spawn_async(lambda ready_fd: self._spec.argv(index, ready_fd))
        process = self._processes[index] = spawned.process
        report = await spawned.ready(WORKER_READY_TIMEOUT_S, f"proxy worker {index}")
        if not report.ok:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise RuntimeError(f"worker {index}: {report.message or 'failed'}")
        logger.info("proxy worker %d serving (pid %d)", index, process.pid)

    async def _watch(self, index: int) -> None:
        backoff = Backoff(WORKER_BACKOFF_INITIAL_S, WORKER_BACKOFF_MAX_S)
        while True:
            code = await self._processes[index].wait()
            if self._stopping:
                return
            logger.warning("proxy worker %d exited with %s; restarting it", index, code)
            while True:
                await asyncio.sleep(backoff.next())
                try:
                    await self._start(index)
                    break
                except (RuntimeError, OSError) as exc:
                    logger.error("restarting proxy worker %d failed: %s", index, exc)
            backoff.reset()

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its requests), then wait; SIGKILL
        whichever is still there after ``WORKER_STOP_TIMEOUT_S``."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(WORKER_STOP_TIMEOUT_S):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))
        await asyncio.gather(*self._watchers, return_exceptions=True)
        shutil.rmtree(self._spec.stats_dir, ignore_errors=True)
