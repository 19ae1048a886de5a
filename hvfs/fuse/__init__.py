"""The kernel binding: pyfuse3 ``Operations`` (thin: requests in, errno out) and the
kernel notifier thread. The only package besides ``hvfs.mount`` that imports pyfuse3.
"""
