"""The mount's counters, gauges and histograms, in one registry.

Every part of the mount counts here (the vfs, the notifier thread, conflicts,
errors, queues, the FUSE requests) and ``.hvfs/status`` renders from here;
the Prometheus endpoint (``hvfs mount --metrics``) reads the same registry,
``Metrics.registry``, a prometheus_client ``CollectorRegistry``.

Names here are dotted, ``<part>.<what>``; each has a Prometheus name, by
default ``hvfs_<part>_<what>`` (``_total`` added to counters), or the one it
was declared with. A counter only grows, a gauge is read from its owner when
asked. A plain counter has one writer thread, so dict updates under the GIL
are enough; labelled counters and histograms are prometheus_client's own
(thread-safe) and are exported only, not part of ``snapshot()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["LATENCY_BUCKETS", "Metrics"]

log = logging.getLogger(__name__)

Value = float | int | str | bool
#: seconds: a FUSE request answered from the index takes microseconds, one with NATS round trips milliseconds
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], Value]] = {}
        self.help: dict[str, str] = {}
        #: dotted name -> (Prometheus name, "counter" | "gauge") for what the collector exports
        self._export: dict[str, tuple[str, str]] = {}
        self._families: dict[str, Counter | Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))  # type: ignore[arg-type]

    @staticmethod
    def prom_name(name: str) -> str:
        return "hvfs_" + name.replace(".", "_")

    def counter(self, name: str, help: str = "", prom: str | None = None, peak: bool = False) -> None:
        """Declare a counter (at 0) so it is listed before it first moves; ``peak``:
        a high-water mark (``peak()``), exported as a gauge."""
        self._counters.setdefault(name, 0)
        if help:
            self.help[name] = help
        self._export[name] = (prom or self.prom_name(name), "gauge" if peak else "counter")

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def peak(self, name: str, value: int) -> None:
        """A high-water mark: keeps the largest value seen."""
        if value > self._counters.get(name, 0):
            self._counters[name] = value

    def gauge(self, name: str, read: Callable[[], Value], help: str = "",
              prom: str | None = None, counter: bool = False) -> None:
        """A value its owner holds (a queue length, a connection state), read when asked.

        ``counter``: the owner's value only grows (the store's call counts), so it
        is exported as a Prometheus counter."""
        self._gauges[name] = read
        if help:
            self.help[name] = help
        self._export[name] = (prom or self.prom_name(name), "counter" if counter else "gauge")

    # -- labelled counters and histograms (exported only) ------------------------------

    def labelled(self, name: str, help: str = "", labels: Sequence[str] = (),
                 prom: str | None = None) -> Counter:
        """A counter by label values (``fuse.requests`` by op); declared once, then
        the same name returns it (help and labels are the declaration's)."""
        fam = self._families.get(name)
        if fam is None:
            fam = Counter(prom or self.prom_name(name), help, list(labels), registry=self.registry)
            self._families[name] = fam
            self.help[name] = help
        assert isinstance(fam, Counter)
        return fam

    def histogram(self, name: str, help: str = "", labels: Sequence[str] = (), prom: str | None = None,
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        """A histogram (latencies, lags), by label values; declared once, then the same
        name returns it."""
        fam = self._families.get(name)
        if fam is None:
            fam = Histogram(prom or self.prom_name(name), help, list(labels), registry=self.registry,
                            buckets=list(buckets))
            self._families[name] = fam
            self.help[name] = help
        assert isinstance(fam, Histogram)
        return fam

    def observe(self, name: str, value: float) -> None:
        """One observation of an unlabelled histogram declared before; ignored otherwise."""
        fam = self._families.get(name)
        if isinstance(fam, Histogram):
            fam.observe(value)

    def total(self, name: str) -> float:
        """A labelled counter's sum over its labels, a histogram's count of observations."""
        fam = self._families.get(name)
        if fam is None:
            return 0
        want = "_count" if isinstance(fam, Histogram) else "_total"
        return sum(s.value for m in fam.collect() for s in m.samples if s.name.endswith(want))

    # -- reading ----------------------------------------------------------------------

    def value(self, name: str) -> Value:
        if name in self._gauges:
            return self._gauges[name]()
        return self._counters.get(name, 0)

    def group(self, prefix: str) -> dict[str, Value]:
        """Everything under ``prefix.``, keyed by the rest of the name."""
        p = prefix + "."
        out: dict[str, Value] = {
            k[len(p):]: v for k, v in self._counters.items() if k.startswith(p)}
        out.update({k[len(p):]: fn() for k, fn in self._gauges.items() if k.startswith(p)})
        return out

    def snapshot(self) -> dict[str, Value]:
        out: dict[str, Value] = dict(self._counters)
        out.update({k: fn() for k, fn in self._gauges.items()})
        return out

    def text(self) -> bytes:
        """The Prometheus text exposition of everything here."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """The dotted counters and gauges as Prometheus families, read at each scrape.

    A scrape runs on the HTTP server's thread while the trio thread changes the
    index: a gauge whose read fails that moment (a dict resized while summed) is
    left out of that scrape rather than failing it.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        for name, (prom, kind) in list(m._export.items()):
            try:
                raw: Any = m.value(name)
                v = float(raw)
            except Exception as e:  # noqa: BLE001 - a scrape must not fail for one gauge
                log.debug("metric %s not read: %s", name, e)
                continue
            help = m.help.get(name, name)
            fam: Metric
            if kind == "counter":
                fam = CounterMetricFamily(prom, help)
            else:
                fam = GaugeMetricFamily(prom, help)
            fam.add_metric([], v)
            yield fam


def parse_listen(addr: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (loopback); ValueError with the reason."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", addr
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"--metrics {addr!r}: give HOST:PORT, e.g. 127.0.0.1:9464") from None
    if not 0 < n < 65536:
        raise ValueError(f"--metrics {addr!r}: port {n} is not in 1-65535")
    return host, n


def serve_http(metrics: Metrics, addr: str) -> Any:
    """Serve ``metrics`` as Prometheus text on ``addr`` (any path, ``/metrics`` too) from
    prometheus_client's server thread; returns the server, whose ``shutdown()`` stops it.
    OSError (the address is taken, not ours to bind) and ValueError say why."""
    from prometheus_client import start_http_server

    host, port = parse_listen(addr)
    server, _thread = start_http_server(port, host, registry=metrics.registry)
    return server
