"""In-process benchmarks: each runtime against the naive way to do the same work, in one run."""
