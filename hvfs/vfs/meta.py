"""``_meta/``: the fleet layout's own read-only files (the seed's ``_meta/``).

``daemon.yml`` is the mount's status as YAML; ``schema-version.yml`` names
the schema version and the schema of each binding; ``schemas/NAME.json`` is
the JSON Schema of each entity type, for agents that want to check a value
before they write it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import yaml

from ..codec import json_schema
from ..entities import SCHEMA_VERSION, SCHEMAS
from ..errors import NotPermitted
from .handles import Handle
from .provider import Provider, Services
from .tree import Node, display

__all__ = ["MetaProvider"]


class MetaProvider(Provider):
    def __init__(self, sv: Services, path: str, status: Callable[[], dict[str, object]],
                 bindings: list[dict[str, object]]) -> None:
        super().__init__(sv)
        tree = sv.tree
        self.dir = tree.mkdirs(path)
        self.dir.provider = self
        schemas = tree.mkdirs(f"{path}/schemas")
        schemas.provider = self

        def daemon() -> bytes:
            return _yaml(status())

        def version() -> bytes:
            return _yaml({"schema_version": SCHEMA_VERSION, "schemas": sorted(SCHEMAS),
                          "bindings": bindings})

        self.rendered_file(self.dir, b"daemon.yml", daemon)
        self.rendered_file(self.dir, b"schema-version.yml", version)
        for name, model in sorted(SCHEMAS.items()):
            data = json_schema(model)
            self.rendered_file(schemas, f"{name}.json".encode(), lambda data=data: data)  # type: ignore[misc]

    def size(self, node: Node) -> int:
        return len(node.render()) if node.render is not None else 0

    async def open(self, node: Node, flags: int, pid: int) -> Handle:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise NotPermitted(f"{display(node)} is read-only: the mount writes _meta/")
        assert node.render is not None
        return Handle(0, node, False, node.render(), 0, direct_io=True)


def _yaml(doc: object) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False).encode()
