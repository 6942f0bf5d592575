"""The reasoning judge: the backend contract (contract), Rank1's rules (rank1), the
continuous-batching engine (engine) and the in-process backend on it (local)."""
