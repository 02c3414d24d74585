//! `ClusterService`: the replica set as an operator sees and changes it.
//! Reading the status takes any client token (clients find the leader with
//! it); changing membership, moving leadership and taking snapshots take
//! the admin role, and are recorded in the audit trail.

use std::time::{Duration, Instant};

use edupool_proto::v1 as pb;
use edupool_proto::v1::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use super::{status, Auth, Rpc};
use crate::raft::{MembershipChange, RaftStatus, Replica, Role};
use crate::state::{AuditResult, Command};

/// How long a new member may take to catch up as a learner; past this,
/// `add-member` fails and the member stays a learner (never a voter that
/// cannot vote sensibly).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Cluster {
    pub replica: Replica,
    pub auth: Auth,
}

impl Cluster {
    fn view(&self) -> pb::ClusterStatus {
        status_view(&self.replica.status())
    }

    /// Waits (briefly) until the published status shows `done`: the reply
    /// to a change comes as it is applied, a moment before the status.
    async fn settle(&self, done: impl Fn(&RaftStatus) -> bool) {
        let mut watch = self.replica.watch_status();
        let _ = tokio::time::timeout(Duration::from_secs(2), watch.wait_for(|s| done(s))).await;
    }

    async fn wait_caught_up(&self, id: u64) -> Result<(), Status> {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut watch = self.replica.watch_status();
        loop {
            {
                let s = watch.borrow_and_update();
                if s.role != Role::Leader {
                    return Err(status(self.replica.not_leader()));
                }
                let matched = s.members.iter().find(|m| m.id == id).map(|m| m.match_index);
                // Close enough: the rest arrives within a heartbeat or two.
                // A match of 0 means it has not even taken the snapshot.
                if matched.is_some_and(|m| m > 0 && m + 100 >= s.commit) {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "replica {id} joined as a learner but has not caught up after {CATCH_UP_TIMEOUT:?}; \
                     check that it runs with --join and that the leader can reach its address, \
                     then run add-member again"
                )));
            }
            let _ = tokio::time::timeout(left, watch.changed()).await;
        }
    }
}

pub fn status_view(s: &RaftStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        id: s.id,
        role: match s.role {
            Role::Follower => pb::ReplicaRole::Follower,
            Role::Candidate => pb::ReplicaRole::Candidate,
            Role::PreCandidate => pb::ReplicaRole::PreCandidate,
            Role::Leader => pb::ReplicaRole::Leader,
        } as i32,
        leader_id: s.leader_id.unwrap_or(0),
        leader_address: s.leader_address.clone().unwrap_or_default(),
        term: s.term,
        commit_index: s.commit,
        applied_index: s.applied,
        last_index: s.last_index,
        snapshot_index: s.snapshot_index,
        snapshot_bytes: s.snapshot_bytes,
        members: s
            .members
            .iter()
            .map(|m| pb::ClusterMember {
                id: m.id,
                address: m.address.clone(),
                voter: m.voter,
                match_index: m.match_index,
            })
            .collect(),
        state_hash: String::new(),
    }
}

fn valid_address(address: &str) -> Result<(), Status> {
    let hostport = address.trim_start_matches("http://");
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(Status::invalid_argument(format!(
            "{address:?} is not a host:port address"
        ))),
    }
}

#[tonic::async_trait]
impl ClusterService for Cluster {
    async fn get_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.auth.authorize(&req, Rpc::ClusterStatus).await?;
        if req.get_ref().with_state_hash {
            // Status and hash at the same applied index, taken together.
            let (applied, hash) = self.replica.state_hash();
            let mut view = self.view();
            view.applied_index = applied;
            view.state_hash = hash;
            return Ok(Response::new(view));
        }
        Ok(Response::new(self.view()))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.auth.authorize(&req, Rpc::AddMember).await?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("replica ids start at 1"));
        }
        valid_address(&r.address)?;
        let address = r.address.trim_start_matches("http://").to_string();
        let target = format!("{}={address}", r.id);
        let done = self.add_member_steps(r.id, address).await;
        self.record(&caller, Rpc::AddMember, target, done).await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.auth.authorize(&req, Rpc::RemoveMember).await?;
        let id = req.into_inner().id;
        let done = async {
            self.replica
                .change_membership(MembershipChange::Remove { id })
                .await
                .map_err(status)?;
            self.settle(|s| s.members.iter().all(|m| m.id != id)).await;
            Ok(self.view())
        }
        .await;
        self.record(&caller, Rpc::RemoveMember, id.to_string(), done)
            .await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = self.auth.authorize(&req, Rpc::TransferLeader).await?;
        let to = req.into_inner().to;
        let done = async {
            self.replica.transfer_leader(to).await.map_err(status)?;
            // Leadership moves within an election timeout; report where it went.
            let mut watch = self.replica.watch_status();
            let moved = watch.wait_for(|s| s.leader_id == Some(to));
            let _ = tokio::time::timeout(Duration::from_secs(5), moved).await;
            Ok(self.view())
        }
        .await;
        self.record(&caller, Rpc::TransferLeader, to.to_string(), done)
            .await
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let caller = self.auth.authorize(&req, Rpc::Snapshot).await?;
        let done = self
            .replica
            .snapshot_now()
            .await
            .map_err(status)
            .map(|env| pb::SnapshotReply {
                index: env.index,
                term: env.term,
                data: env.encode(),
            });
        self.record(&caller, Rpc::Snapshot, String::new(), done)
            .await
    }
}

impl Cluster {
    async fn add_member_steps(
        &self,
        id: u64,
        address: String,
    ) -> Result<pb::ClusterStatus, Status> {
        let r = pb::AddMemberRequest { id, address };
        let address = r.address;
        // A learner first: it catches up without counting towards the
        // quorum, so adding a replica never stalls writes.
        self.replica
            .change_membership(MembershipChange::AddLearner { id: r.id, address })
            .await
            .map_err(status)?;
        self.wait_caught_up(r.id).await?;
        self.replica
            .change_membership(MembershipChange::Promote { id: r.id })
            .await
            .map_err(status)?;
        self.settle(|s| s.members.iter().any(|m| m.id == r.id && m.voter))
            .await;
        Ok(self.view())
    }

    /// Records a replica-set change in the audit trail with its result
    /// (membership is not part of the state, so it is recorded on its own).
    async fn record<T>(
        &self,
        caller: &super::Caller,
        rpc: Rpc,
        target: String,
        done: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let result = match &done {
            Ok(_) => AuditResult::Ok,
            Err(e) => AuditResult::Rejected(e.message().to_string()),
        };
        let record = Command::RecordAudit {
            actor: caller.actor(),
            action: rpc.action().into(),
            target,
            result,
        };
        if let Err(e) = self.replica.propose(record).await {
            tracing::warn!("a replica-set change was not recorded in the audit trail: {e}");
        }
        done.map(Response::new)
    }
}
