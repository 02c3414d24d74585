//! The edupool core: everything every replica must compute identically.
//!
//! - `state`: the replicated state machine (commands in, effects out).
//! - `planner`: placement decisions over a state.
//! - `fragmentation`: how much free GPU capacity the expected jobs could
//!   not use (the packing measure).
//!
//! Nothing here performs I/O, reads a clock or spawns a task: time comes in
//! as an argument (the log entry's stamp), so equal inputs give equal
//! outputs on every machine. The dependency check in `tests/` keeps it so.

#![forbid(unsafe_code)]

pub mod fragmentation;
pub mod planner;
pub mod state;
