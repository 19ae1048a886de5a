"""fsx-style model test: random writes, truncates and reads on a real mount,
every read checked against an in-memory model, every close against NATS."""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX = 8192

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, MAX), st.binary(min_size=1, max_size=700)),
        st.tuples(st.just("truncate"), st.integers(0, MAX), st.just(b"")),
        st.tuples(st.just("read"), st.integers(0, MAX), st.integers(1, 3000)),
        st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=ops)
def test_fsx(mnt, raw, bucket, steps):
    path = mnt.path("kv", bucket, "fsx.bin")
    model = bytearray(b"seed")
    path.write_bytes(bytes(model))
    fd = os.open(path, os.O_RDWR)
    try:
        for op, a, b in steps:
            if op == "write":
                os.pwrite(fd, b, a)
                if a > len(model):
                    model.extend(bytes(a - len(model)))
                model[a:a + len(b)] = b
            elif op == "truncate":
                os.ftruncate(fd, a)
                del model[a:]
                model.extend(bytes(a - len(model)))
            elif op == "read":
                assert os.pread(fd, b, a) == bytes(model[a:a + b])
            else:
                os.close(fd)
                fd = -1
                assert raw.value(bucket, "fsx=2Ebin") == bytes(model)
                assert os.stat(path).st_size == len(model)
                fd = os.open(path, os.O_RDWR)
            assert os.fstat(fd).st_size == len(model)
    finally:
        if fd >= 0:
            os.close(fd)
    assert raw.value(bucket, "fsx=2Ebin") == bytes(model)
    assert path.read_bytes() == bytes(model)
