"""What a typed binding's file shows and what NATS stores for it.

A writer writes YAML (or JSON); NATS stores compact JSON, complete (model
defaults and context fields filled in) and in the model's field order, so that
any NATS client reads the same entity the mount shows. Reading renders the
stored JSON back as YAML or pretty JSON, as a pure function of the stored
bytes: nothing is filled at read time, so a read-modify-write of an unchanged
file stores the same bytes again.
"""

from __future__ import annotations

import difflib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from .errors import Invalid

__all__ = [
    "EMPTY_REASON", "Codec", "Context", "FastLoader", "StrictConstructor", "StrictLoader", "json_schema", "validation_reason", "yaml_problem",
    "yaml_reason",
]

#: the reason show() gives for an empty stored value
EMPTY_REASON = "empty value (a file being created, or not an entity)"
_MAX_REASON = 500
_TS = "tag:yaml.org,2002:timestamp"
_YAML_WIDTH = 1 << 16  # never fold a long line: a field stays on one line for grep
_CACHE_ENTRIES = 512  # rendered values a codec keeps (show is a pure function of the bytes)
_CACHE_VALUE = 64 << 10  # larger values are rendered each time


@dataclass
class Context:
    """Where a value is written: what the model's ``hvfs_fill`` fields are filled from."""

    name: str  # the file's name without its extension ("ag-7")
    dirs: list[str] = field(default_factory=list)  # directories below the binding root (["is-42"])
    writer: str = ""  # the mount's writer identity

    def value(self, source: str) -> tuple[str | None, str]:
        """The value of a fill source and what to call it in a reason; None when there is none."""
        if source == "name":
            return (self.name or None), "the file name"
        if source == "writer":
            return (self.writer or None), "the writer"
        if source.startswith("path:"):
            n = int(source[5:])
            return (self.dirs[n] if n < len(self.dirs) else None), "the directory"
        raise ValueError(f"unknown fill source {source!r}")


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class StrictConstructor(SafeConstructor):
    """``safe_load``'s constructor, stricter where silence would lose or twist data.

    A duplicate key is refused (taking the last is a lost write); so is an
    alias, as shared nodes expanded into JSON can grow without bound (config
    files, which are never expanded, allow them: ``allow_aliases``); so are
    keys that are not strings, and tags that are not JSON data (!!binary,
    !!set, ...). Timestamps stay strings: the model parses them, and a field
    that is a string keeps what was written.
    """

    allow_aliases = False

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # An alias is the node of its anchor once more: the parser (Python or
        # libyaml alike) hands the constructor the same node object again.
        if not self.allow_aliases and (node in self.constructed_objects or node in self.recursive_objects):
            raise ConstructorError(None, None, "an alias is not allowed: write the value out", node.start_mark)
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
                what = key_node.value if isinstance(key_node, ScalarNode) else f"a {key_node.id}"
                raise ConstructorError(None, None, f"a key must be a string, not {what}", key_node.start_mark)
            if key_node.value in seen:
                raise ConstructorError(None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _refuse(loader: SafeConstructor, node: Node) -> Any:
    raise ConstructorError(None, None, f"{node.tag.replace('tag:yaml.org,2002:', '!!')} is not JSON data",
                           node.start_mark)


for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    StrictConstructor.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)


class StrictResolver(Resolver):
    """The YAML 1.1 implicit types, without timestamps (they stay strings)."""


StrictResolver.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != _TS] for k, v in Resolver.yaml_implicit_resolvers.items()
}


class StrictLoader(Reader, Scanner, Parser, Composer, StrictConstructor, StrictResolver):
    """The pure-Python loader (what ``FastLoader`` falls back to without libyaml)."""

    def __init__(self, stream: Any) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        StrictConstructor.__init__(self)
        StrictResolver.__init__(self)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if not self.allow_aliases and self.check_event(AliasEvent):
            ev = self.peek_event()
            raise ComposerError(None, None, f"alias *{ev.anchor} not allowed: write the value out",
                                ev.start_mark)
        return super().compose_node(parent, index)


if yaml.__with_libyaml__:
    from yaml.cyaml import CParser

    class FastLoader(CParser, StrictConstructor, StrictResolver):  # type: ignore[misc]
        """The same rules on libyaml's parser, about 9x faster than the pure-Python one;
        used only on text without anchors, so it skips the alias check."""

        def __init__(self, stream: Any) -> None:
            CParser.__init__(self, stream)
            StrictConstructor.__init__(self)
            StrictResolver.__init__(self)

        def construct_object(self, node: Node, deep: bool = False) -> Any:
            return SafeConstructor.construct_object(self, node, deep=deep)
else:  # pragma: no cover - PyYAML built without libyaml
    FastLoader = StrictLoader  # type: ignore[misc,assignment]


def _load_yaml(text: str) -> Any:
    """libyaml for what it takes; anything it refuses (or holds characters the pure
    parser refuses) goes through the pure-Python parser, whose acceptance and
    error messages are the reference: libyaml only makes the common case fast."""
    # Without "&" there is no anchor, so no alias: libyaml, with no alias check at all.
    if FastLoader is not StrictLoader and "&" not in text and not Reader.NON_PRINTABLE.search(text):
        try:
            return yaml.load(text, Loader=FastLoader)  # noqa: S506 - a SafeConstructor
        except yaml.YAMLError:
            pass
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeConstructor


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """safe_dump (on libyaml's emitter when there is one), with multi-line strings as
    literal blocks (a comment's body reads as written)."""


_ODD_BREAKS = frozenset("\r\x85\u2028\u2029")  # line breaks a reader would fold: only escaped they survive


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    style = '"' if not _ODD_BREAKS.isdisjoint(s) else "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def yaml_problem(e: yaml.YAMLError) -> tuple[int | None, int | None, str]:
    """A YAML error as (line, column) counted from 1 (None when unknown) and the problem."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "bad YAML"
        return (mark.line + 1, mark.column + 1, what) if mark else (None, None, what)
    if isinstance(e, yaml.reader.ReaderError):
        return None, None, f"character {e.position + 1}: {e.reason} (#x{e.character:04x})"
    return None, None, str(e)


def yaml_reason(e: yaml.YAMLError) -> str:
    """A YAML error as "line 3, column 5: mapping values are not allowed here"."""
    line, col, what = yaml_problem(e)
    return f"line {line}, column {col}: {what}" if line is not None else what


def validation_reason(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Every error as "loc: msg", "; "-joined and capped: what a writer reads to fix the file."""
    fields = [f.alias or n for n, f in model.model_fields.items()] if model is not None else []
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            near = difflib.get_close_matches(str(err["loc"][0]), fields, n=1)
            if near:
                msg += f" (did you mean {near[0]}?)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return _cap(parts)


def _cap(parts: list[str]) -> str:
    out = ""
    for i, p in enumerate(parts):
        more = f" (and {len(parts) - i} more)"
        nxt = f"{out}; {p}" if out else p
        if len(nxt) > _MAX_REASON and out:
            return out + more
        out = nxt
    return out if len(out) <= _MAX_REASON else out[: _MAX_REASON - 3] + "..."


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def _text(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}") from None
    return text.removeprefix("\ufeff")


def _pairs(v: Any) -> Any:
    """Join the surrogate pairs YAML's "\\uXXXX" escapes leave apart; a lone one is no text."""
    if isinstance(v, str):
        if any("\ud800" <= c <= "\udfff" for c in v):
            try:
                return v.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                raise Invalid(f"a lone surrogate escape in {v[:40]!r}") from None
        return v
    if isinstance(v, list):
        return [_pairs(x) for x in v]
    if isinstance(v, dict):
        return {_pairs(k): _pairs(x) for k, x in v.items()}
    return v


def _no_dups(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(c: str) -> Any:
    raise ValueError(f"{c} is not a JSON number")


def _json_loads(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_dups, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise Invalid(f"line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise Invalid(str(e)) from None


def _mapping(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping of fields, got {_kind(v)}")
    return v


class Codec:
    """A typed binding's format ("yaml" or "json") and model (None: any mapping)."""

    def __init__(self, fmt: str, model: type[BaseModel] | None, line: bool = False) -> None:
        if fmt not in ("yaml", "json"):
            raise ValueError(f"format {fmt!r} has no codec (raw bindings store what is written)")
        self.fmt = fmt
        self.model = model
        self.line = line  # stream messages: one JSON line each
        self.suffix = ".yml" if fmt == "yaml" else ".json"
        self.fill: dict[str, str] = dict(getattr(model, "hvfs_fill", {}) or {})
        self._order = [f.alias or n for n, f in model.model_fields.items()] if model is not None else []
        #: stored bytes -> what show() made of them: a value is rendered once, not at every open
        self._shown: OrderedDict[bytes, tuple[bytes, str | None]] = OrderedDict()

    def __repr__(self) -> str:
        return f"Codec({self.fmt!r}, {getattr(self.model, '__name__', None)}, line={self.line})"

    # -- writing ---------------------------------------------------------------

    def store(self, data: bytes, ctx: Context) -> bytes:
        """The bytes a writer wrote -> the bytes NATS stores. Invalid(reason) if they are no entity."""
        text = _text(data)
        if not text.strip():
            raise Invalid("empty: an entity needs its fields")
        value = self._parse(text)
        if value is None and self.fmt == "yaml":  # only comments, or "~"
            raise Invalid("empty: an entity needs its fields")
        fields = dict(_mapping(value))
        for name, source in self.fill.items():
            want, what = ctx.value(source)
            if want is None:
                continue
            given = fields.get(name)
            if given is None:
                fields[name] = want
            elif given != want:
                raise Invalid(f"{name} {given} does not match {what} {want}")
        out: Any = fields
        if self.model is not None:
            try:
                out = self.model.model_validate(fields).model_dump(mode="json", by_alias=True, exclude_none=True)
            except ValidationError as e:
                raise Invalid(validation_reason(e, self.model)) from None
        try:
            s = json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return (s + "\n" if self.line else s).encode("utf-8")
        except ValueError as e:  # NaN or infinity; a lone surrogate from a JSON escape
            raise Invalid(f"not JSON data: {e}") from None

    def _parse(self, text: str) -> Any:
        if self.fmt == "json":
            return _json_loads(text)
        if text.lstrip().startswith("{"):
            # JSON is YAML, nearly: PyYAML reads 1e5 as a string and a \ud83d\ude00 pair as two
            # lone surrogates. Read JSON as JSON; YAML's flow style and errors are the fallback.
            try:
                return _json_loads(text)
            except Invalid:
                pass
        try:
            value = _load_yaml(text)
            # Surrogates come only from "\u" escapes (UTF-8 input holds none): look only then.
            return _pairs(value) if "\\u" in text or "\\U" in text else value
        except yaml.YAMLError as e:
            raise Invalid(yaml_reason(e)) from None

    # -- reading ---------------------------------------------------------------

    def show(self, stored: bytes) -> tuple[bytes, str | None]:
        """Stored bytes -> what readers see, and why they are shown raw (None: they are not)."""
        hit = self._shown.get(stored)
        if hit is not None:
            self._shown.move_to_end(stored)
            return hit
        out = self._show(stored)
        if len(stored) <= _CACHE_VALUE:
            self._shown[stored] = out
            if len(self._shown) > _CACHE_ENTRIES:
                self._shown.popitem(last=False)
        return out

    def _show(self, stored: bytes) -> tuple[bytes, str | None]:
        if not stored:
            return b"", EMPTY_REASON
        try:
            value = _mapping(_json_loads(_text(stored)))
            if self.model is not None:
                try:
                    self.model.model_validate(value)
                except ValidationError as e:
                    raise Invalid(validation_reason(e, self.model)) from None
            ordered = {k: value[k] for k in self._order if k in value}
            ordered.update((k, v) for k, v in value.items() if k not in ordered)
            if self.fmt == "json":
                return (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), None
            return yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                             default_flow_style=False, width=_YAML_WIDTH).encode("utf-8"), None
        except Invalid as e:
            return stored, f"stored value: {e.reason}"
        except Exception as e:  # show never raises: a reader sees the bytes and why
            return stored, f"stored value: {type(e).__name__}: {e}"


def json_schema(model: type[BaseModel]) -> bytes:
    """The model's JSON Schema, pretty: the content of ``_meta/schemas/NAME.json``."""
    return (json.dumps(model.model_json_schema(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
