"""Tier 1: the escaping rule (pure functions)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvfs.errors import InvalidName
from hvfs.names import VALUE_NAME, decode_token, encode_name, is_valid_key


@pytest.mark.parametrize(
    "name,token",
    [
        (b"owner", "owner"),
        (b"owner.yml", "owner=2Eyml"),
        (b"my notes", "my=20notes"),
        (b"a=b", "a=3Db"),
        (b"x@y", "x=40y"),
        ("café".encode(), "caf=C3=A9"),
        (b"-_", "-_"),
    ],
)
def test_encode_examples(name: bytes, token: str) -> None:
    assert encode_name(name) == token
    assert decode_token(token) == (name, True)


@given(st.binary(min_size=1, max_size=80).filter(lambda b: b"/" not in b and b"\0" not in b
                                                   and b not in (b".", b"..", VALUE_NAME)))
def test_round_trip(name: bytes) -> None:
    token = encode_name(name)
    assert is_valid_key(token)
    assert "." not in token
    assert decode_token(token) == (name, True)


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_unmappable(bad: bytes) -> None:
    with pytest.raises(InvalidName):
        encode_name(bad)


@pytest.mark.parametrize(
    "token,shown",
    [("config/app", b"config=2Fapp"), ("a=2eb", b"a=2eb"), ("a=41", b"a=41"), ("x=", b"x="),
     ("=2E", b"=2E"), ("=00", b"=00")],
)
def test_foreign_tokens(token: str, shown: bytes) -> None:
    assert decode_token(token) == (shown, False)


def test_valid_keys() -> None:
    assert is_valid_key("is-42.owner=2Eyml")
    assert not is_valid_key(".a")
    assert not is_valid_key("a.")
    assert not is_valid_key("a..b")
    assert not is_valid_key("a b")
