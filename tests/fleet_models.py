"""A project's own entity model, bound by test_fleet.py as ``schema: tests.fleet_models:Note``.

The mount imports it (docs/entities.md, "Schemas"): ``hvfs_fill`` fills the id
from the file name and the author from the writer identity, as the built-in
models do.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Note(BaseModel):
    """A short note: notes/n-1.json."""

    model_config = ConfigDict(extra="forbid")

    hvfs_fill: ClassVar[dict[str, str]] = {"id": "name", "author": "writer"}

    id: str = Field(pattern=r"^n-[a-z0-9-]+$")
    author: str
    text: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
