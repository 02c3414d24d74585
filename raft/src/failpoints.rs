//! Faults injected on demand by the integration tests, compiled in only
//! with the `failpoints` cargo feature (which the tests crate enables; a
//! release or ordinary build carries none of this).
//!
//! A fault is armed by creating a file named after it in the replica's
//! data directory. The replica removes the file as the fault fires, so a
//! replica restarted on the same directory runs normally.

use std::path::Path;

/// Makes the raft driver task panic at its next tick.
pub const DRIVER_PANIC: &str = "failpoint-raft-driver-panic";

/// Called by the driver on every tick.
pub fn driver_tick(data_dir: &Path) {
    if std::fs::remove_file(data_dir.join(DRIVER_PANIC)).is_ok() {
        panic!("failpoint {DRIVER_PANIC} fired");
    }
}
