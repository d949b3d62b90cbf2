"""Benchmarks: side-by-side measurements against real alternatives, printed as tables.

Nothing here is estimated: every figure comes from a run on this machine, and a peer
that is not installed is reported as "not installed"."""
