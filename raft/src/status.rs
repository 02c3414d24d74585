//! `RaftStatus`: what one replica knows of the cluster, published by the
//! driver after every step for the cluster service and for metrics.

use raft::StateRole;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Leader => "leader",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    /// Highest index known replicated on it; only a leader knows (else 0).
    pub match_index: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub role: Role,
    pub leader_id: Option<u64>,
    pub leader_address: Option<String>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub snapshot_bytes: u64,
    /// The index of the snapshot being written in the background, if any.
    pub snapshot_in_flight: Option<u64>,
    /// Entries held in the log behind the snapshot (memory and disk).
    pub log_entries: u64,
    pub members: Vec<MemberStatus>,
}
