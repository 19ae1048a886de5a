"""A background job of the mount: one step every ``interval`` seconds, or sooner when woken."""

from __future__ import annotations

import trio

__all__ = ["Periodic"]


class Periodic:
    """Subclasses say what a ``step`` does; the mount's nursery runs ``run``."""

    interval = 1.0

    def __init__(self) -> None:
        self._wake = trio.Event()

    def wake(self) -> None:
        """Step now rather than at the next interval (new work arrived)."""
        self._wake.set()

    async def step(self) -> None:
        raise NotImplementedError

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.step()
