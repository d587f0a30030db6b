//! Talking to engines over HTTP, and kitt's own engine simulator.
//!
//! Owns every HTTP conversation with an engine; never touches Docker or the run directory.

pub mod sim;
