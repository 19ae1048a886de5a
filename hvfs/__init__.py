"""hvfs: NATS JetStream KV buckets (and streams) as a filesystem."""

__version__ = "0.1.0"
