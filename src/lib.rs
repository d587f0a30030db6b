//! kitt: a declarative test harness for LLM inference engines.
//!
//! The module map is the data flow: `manifest` (YAML → typed, spanned documents) → `catalog`
//! (built-in and suite-local templates) → `template` (typed rendering) → `plan` (matrix, steps,
//! keys) → `run` (scheduler, journal) → `engine` (HTTP, simulator) → `report` →
//! `store` (the results database) and `compare` (repetitions, deltas, verdicts).

pub mod agent;
pub mod bench;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod collect;
pub mod compare;
pub mod docker;
pub mod engine;
pub mod eval;
pub mod exec;
pub mod fingerprint;
pub mod manifest;
pub mod plan;
pub mod report;
pub mod run;
pub mod secrets;
pub mod serve;
pub mod settings;
pub mod store;
pub mod template;
