from .helpers import wait_for


def test_remote_key_visible(mnt, raw, bucket):
    raw.put(bucket, "is-42.owner", b"agent: ag-7\n")
    p = mnt.path("kv", bucket, "is-42", "owner")
    wait_for(p.exists, what="remote key")
    assert p.read_bytes() == b"agent: ag-7\n"
