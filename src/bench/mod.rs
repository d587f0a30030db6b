//! Benchmark mechanisms. `load`: a streaming load generator and its metrics.

pub mod load;
pub mod metrics;
pub mod tokenizer;
