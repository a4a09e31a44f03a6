"""Benchmarking: timing (measure), FLOP counts (flops), the official-style baselines
(baselines), the model workloads that `mage-fast bench` runs (workloads) and its report
(report). The per-kernel scripts in the repository's benchmarks/ use the same pieces."""
