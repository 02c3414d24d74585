//! The state machine as the log sees it: what a log entry holds, and the
//! one function that applies a committed entry to the state
//! (`apply_entry`). A leaf: the step, the driver, the offline replay of a
//! data directory and the planner's copy of the state (`mirror`) all
//! apply entries through it.

use edupool_core::state::{Applied, Command, Indexed, Millis, Outcome};
use raft::prelude::{Entry, EntryType};
use serde::{Deserialize, Serialize};

/// The encoding of one log entry's data. `v` versions the format.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogEntry {
    pub v: u32,
    /// When the proposer stamped it: the only clock the state machine sees.
    pub at: Millis,
    pub cmd: Command,
}

pub const LOG_FORMAT: u32 = 1;

impl LogEntry {
    /// The entry's data for `cmd`, stamped `at`.
    pub fn encode(cmd: Command, at: Millis) -> Vec<u8> {
        let entry = LogEntry {
            v: LOG_FORMAT,
            at,
            cmd,
        };
        serde_json::to_vec(&entry).expect("commands always serialize")
    }
}

/// The applied state machine and the index it reflects, under one lock.
/// The state is held with the planner's indexes beside it, kept exact as
/// entries apply; snapshots copy only the state.
#[derive(Default)]
pub struct Machine {
    pub state: Indexed,
    pub applied: u64,
}

/// Applies one normal log entry; entries that carry no command produce
/// nothing.
pub fn apply_entry(state: &mut Indexed, entry: &Entry) -> Applied {
    apply_logged(state, entry, true)
}

/// `apply_entry`, with the errors about the entry logged only if `loud`:
/// a copy of the state (`Mirror`) applies the entries the driver already
/// applied and reported.
pub(crate) fn apply_logged(state: &mut Indexed, entry: &Entry, loud: bool) -> Applied {
    if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
        return Ok((Outcome::None, vec![]));
    }
    match serde_json::from_slice::<LogEntry>(&entry.data) {
        Ok(e) if e.v == LOG_FORMAT => {
            let applied = state.apply(e.cmd, e.at);
            if loud {
                crate::refused::report(entry.index, &applied);
            }
            applied
        }
        // Every replica skips the same undecodable entry, so they stay
        // identical; it can only come from a newer version.
        Ok(e) => {
            if loud {
                tracing::error!(index = entry.index, v = e.v, "log entry of unknown format");
            }
            Ok((Outcome::None, vec![]))
        }
        Err(err) => {
            if loud {
                tracing::error!(index = entry.index, "undecodable log entry: {err}");
            }
            Ok((Outcome::None, vec![]))
        }
    }
}
