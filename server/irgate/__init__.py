"""irgate: a gRPC retrieval inference server for instructable embedders and reasoning judges."""

__version__ = "0.1.0"
