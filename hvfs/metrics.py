"""The mount's counters and gauges, in one registry.

Every part of the mount counts here (the vfs, the notifier thread, conflicts,
errors, queues) and ``.hvfs/status`` renders from here; a metrics endpoint
reads the same registry. Names are dotted, ``<part>.<what>``; a counter only
grows, a gauge is read from its owner when asked. A counter has one writer
thread, so plain dict updates under the GIL are enough.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], float | int | str | bool]] = {}
        self.help: dict[str, str] = {}

    def counter(self, name: str, help: str = "") -> None:
        """Declare a counter (at 0) so it is listed before it first moves."""
        self._counters.setdefault(name, 0)
        if help:
            self.help[name] = help

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def peak(self, name: str, value: int) -> None:
        """A high-water mark: keeps the largest value seen."""
        if value > self._counters.get(name, 0):
            self._counters[name] = value

    def gauge(self, name: str, read: Callable[[], float | int | str | bool], help: str = "") -> None:
        """A value its owner holds (a queue length, a connection state), read when asked."""
        self._gauges[name] = read
        if help:
            self.help[name] = help

    def value(self, name: str) -> float | int | str | bool:
        if name in self._gauges:
            return self._gauges[name]()
        return self._counters.get(name, 0)

    def group(self, prefix: str) -> dict[str, float | int | str | bool]:
        """Everything under ``prefix.``, keyed by the rest of the name."""
        p = prefix + "."
        out: dict[str, float | int | str | bool] = {
            k[len(p):]: v for k, v in self._counters.items() if k.startswith(p)}
        out.update({k[len(p):]: fn() for k, fn in self._gauges.items() if k.startswith(p)})
        return out

    def snapshot(self) -> dict[str, float | int | str | bool]:
        out: dict[str, float | int | str | bool] = dict(self._counters)
        out.update({k: fn() for k, fn in self._gauges.items()})
        return out
