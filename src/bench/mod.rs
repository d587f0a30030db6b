//! Benchmark mechanisms. `load`: a streaming load generator and its metrics.
