"""Settlement to git (docs/settle.md): chosen subtrees of the mount as commits, and back.

``tree`` says what files a state of NATS makes (pure), ``git`` writes them
with dulwich (objects, one branch, a remote), ``worker`` reads NATS through
the Store and ties both together (``Settler``, ``restore``). Nothing here
imports nats-py or pyfuse3.
"""

from __future__ import annotations

from .worker import Outcome, RestoreLine, Settler, restore

__all__ = ["Outcome", "RestoreLine", "Settler", "restore"]
