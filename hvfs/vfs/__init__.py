"""The filesystem, without the kernel and without NATS: inodes, handles, indexes
fed by watches, and the logic of every call. Imports neither pyfuse3 nor nats-py
(``tests/test_layering.py``); ``hvfs.fuse`` binds it to the kernel, ``hvfs.store``
to NATS.
"""
