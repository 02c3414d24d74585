//! `edupoolctl`: the command-line client of the edupool scheduler, as a
//! library the binary and other crates (the scheduler's dev mode, the
//! end-to-end tests) share.
//!
//! - [`jobfile`]: the YAML/TOML job file, its validation and its conversion
//!   to a [`JobSpec`](edupool_proto::v1::JobSpec).
//! - [`client`]: connecting to a scheduler (endpoint list, bearer token) and
//!   describing gRPC errors for people.
//! - [`failover`]: running a command across the replicas, retrying what is
//!   safe to retry, within an overall deadline.
//! - [`cluster`]: the `cluster` commands (replicas, leadership, backups).
//! - [`images`]: `image list` and `node show` (the nodes' image stores
//!   and host-job permission).
//! - [`commands`]: one method per CLI command, writing its result to any
//!   [`Write`](std::io::Write).
//! - [`output`]: tables for people (drawn by `edupool-table`) and JSON
//!   views for scripts.
//! - [`paging`]: reading a list call's pages up to a limit.
//! - [`pki`]: the alliance CA and the node, replica and server certificates
//!   it issues (`edupoolctl pki`).
//! - [`policy`]: tenants' quotas, shares and class caps, node labels and
//!   `job explain`.
//! - [`usage`]: usage reports, settlement and export; prices and budgets.
//! - [`security`]: API tokens, the tenant kill switch and the audit trail.
//! - [`audit`]: the audit trail's export and its refused-call aggregates.
//! - The crate root: names of the protocol's enums (`pending`, `training`,
//!   ...) in both directions.
//!
//! The command-line parsing itself (clap) lives only in the binary:
//! `src/main.rs` parses and connects, and `src/cmd/` holds one file per
//! command group (`job`, `node`, `tenant`, ...) with its arguments and its
//! `run`.

pub mod audit;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod failover;
pub mod images;
pub mod jobfile;
pub mod output;
pub mod paging;
pub mod pki;
pub mod policy;
pub mod security;
pub mod usage;

use edupool_proto::v1::{JobClass, JobState, LogStream, NodeStatus, OnNodeLost};

/// The lower-case name of a [`JobState`] value: `pending`, `running`, ...
/// Values this build does not know are `unknown`.
pub fn job_state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Unspecified) => "unspecified",
        Ok(JobState::Pending) => "pending",
        Ok(JobState::Assigned) => "assigned",
        Ok(JobState::Running) => "running",
        Ok(JobState::Cancelling) => "cancelling",
        Ok(JobState::Succeeded) => "succeeded",
        Ok(JobState::Failed) => "failed",
        Ok(JobState::Cancelled) => "cancelled",
        Ok(JobState::Lost) => "lost",
        Err(_) => "unknown",
    }
}

/// Every job state a person may name, in lifecycle order.
pub const JOB_STATE_NAMES: [&str; 8] = [
    "pending",
    "assigned",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
    "lost",
];

/// The [`JobState`] called `name` (as [`job_state_name`] writes it; case
/// does not matter).
pub fn parse_job_state(name: &str) -> Option<JobState> {
    match name.trim().to_ascii_lowercase().as_str() {
        "pending" => Some(JobState::Pending),
        "assigned" => Some(JobState::Assigned),
        "running" => Some(JobState::Running),
        "cancelling" => Some(JobState::Cancelling),
        "succeeded" => Some(JobState::Succeeded),
        "failed" => Some(JobState::Failed),
        "cancelled" => Some(JobState::Cancelled),
        "lost" => Some(JobState::Lost),
        _ => None,
    }
}

/// Whether a job in this state will never change again.
pub fn job_state_is_final(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Lost)
    )
}

/// The lower-case name of a [`JobClass`] value. `JOB_CLASS_UNSPECIFIED` is
/// `batch`, as the protocol treats it.
pub fn class_name(class: i32) -> &'static str {
    match JobClass::try_from(class) {
        Ok(JobClass::Inference) => "inference",
        Ok(JobClass::Training) => "training",
        Ok(JobClass::Batch | JobClass::Unspecified) => "batch",
        Ok(JobClass::Scavenger) => "scavenger",
        Err(_) => "unknown",
    }
}

/// The lower-case name of an [`OnNodeLost`] value. `ON_NODE_LOST_UNSPECIFIED`
/// is `requeue`, as the protocol treats it.
pub fn on_node_lost_name(policy: i32) -> &'static str {
    match OnNodeLost::try_from(policy) {
        Ok(OnNodeLost::Requeue | OnNodeLost::Unspecified) => "requeue",
        Ok(OnNodeLost::Fail) => "fail",
        Err(_) => "unknown",
    }
}

/// The lower-case name of a [`NodeStatus`] value: `ready`, `down`, `lost`.
pub fn node_status_name(status: i32) -> &'static str {
    match NodeStatus::try_from(status) {
        Ok(NodeStatus::Unspecified) => "unspecified",
        Ok(NodeStatus::Ready) => "ready",
        Ok(NodeStatus::Down) => "down",
        Ok(NodeStatus::Lost) => "lost",
        Err(_) => "unknown",
    }
}

/// The lower-case name of a [`LogStream`] value. `LOG_STREAM_UNSPECIFIED` is
/// `stdout`, as the protocol treats it.
pub fn log_stream_name(stream: i32) -> &'static str {
    match LogStream::try_from(stream) {
        Ok(LogStream::Stdout | LogStream::Unspecified) => "stdout",
        Ok(LogStream::Stderr) => "stderr",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for name in JOB_STATE_NAMES {
            let state = parse_job_state(name).unwrap();
            assert_eq!(job_state_name(state as i32), name);
        }
        assert_eq!(parse_job_state(" Running "), Some(JobState::Running));
        assert_eq!(parse_job_state("done"), None);
        assert_eq!(job_state_name(0), "unspecified");
        assert_eq!(job_state_name(99), "unknown");
    }

    #[test]
    fn final_states() {
        assert!(job_state_is_final(JobState::Succeeded as i32));
        assert!(job_state_is_final(JobState::Lost as i32));
        assert!(!job_state_is_final(JobState::Cancelling as i32));
        assert!(!job_state_is_final(JobState::Pending as i32));
    }

    #[test]
    fn class_and_policy_names_apply_protocol_defaults() {
        assert_eq!(class_name(JobClass::Unspecified as i32), "batch");
        assert_eq!(class_name(JobClass::Inference as i32), "inference");
        assert_eq!(class_name(JobClass::Training as i32), "training");
        assert_eq!(class_name(JobClass::Scavenger as i32), "scavenger");
        assert_eq!(class_name(42), "unknown");
        assert_eq!(on_node_lost_name(0), "requeue");
        assert_eq!(on_node_lost_name(OnNodeLost::Fail as i32), "fail");
        assert_eq!(node_status_name(NodeStatus::Down as i32), "down");
        assert_eq!(log_stream_name(0), "stdout");
        assert_eq!(log_stream_name(LogStream::Stderr as i32), "stderr");
    }
}
