"""The reasoning judge: what every backend takes and gives (contract), the prepared folder's
serving contract (manifest), Rank1's rules and per-document policy (rank1), the one-step families'
rules (families), the continuous-batching engine (engine) and the in-process backend on it (local)."""
