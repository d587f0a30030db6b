//! Talking to engines over HTTP, running them as host processes, and kitt's own engine simulator.
//!
//! Owns every HTTP conversation with an engine and every engine process; never touches Docker
//! or the run directory layout.

pub mod client;
pub mod native;
pub mod sim;
