//! edupool without a cluster.
//!
//! - `dev`: the one-process dev pool (a scheduler and simulated agents) and
//!   its sample workloads.
//! - `simulate`: trace replay through the planner, with a virtual clock.
//!
//! The only crate that may depend on the agent and `edupoolctl` crates
//! alongside the scheduler: dev mode runs all three in one process.

pub mod dev;
pub mod simulate;
