"""The benchmark harness: starts servers pinned to one core, drives the Node load generator on
the other, reads CPU and memory from /proc, and writes the results (see bench/README.md)."""
