//! `edupoolctl cluster ...`: the scheduler's replica set — status, members,
//! leadership and snapshots (backups).

use std::io::Write;
use std::path::Path;

use edupool_proto::v1::{
    AddMemberRequest, ClusterStatus, GetClusterStatusRequest, RemoveMemberRequest, ReplicaRole,
    SnapshotRequest, TransferLeaderRequest,
};
use edupool_table::Table;
use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, Ctl};
use crate::output::OutputFormat;

/// One replica as the answering replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// Known only when a leader answered.
    pub match_index: Option<u64>,
    /// Entries behind the leader's commit index (when known).
    pub lag: Option<u64>,
}

/// `cluster status`, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The replica that answered.
    pub id: u64,
    pub role: String,
    pub leader_id: Option<u64>,
    pub leader_address: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub snapshot_bytes: u64,
    pub state_hash: String,
    pub members: Vec<MemberView>,
}

pub fn role_name(role: i32) -> &'static str {
    match ReplicaRole::try_from(role) {
        Ok(ReplicaRole::Leader) => "leader",
        Ok(ReplicaRole::Follower) => "follower",
        Ok(ReplicaRole::Candidate) => "candidate",
        Ok(ReplicaRole::PreCandidate) => "pre-candidate",
        _ => "unknown",
    }
}

impl From<&ClusterStatus> for ClusterView {
    fn from(s: &ClusterStatus) -> Self {
        let leading = s.role == ReplicaRole::Leader as i32;
        ClusterView {
            id: s.id,
            role: role_name(s.role).into(),
            leader_id: Some(s.leader_id).filter(|id| *id != 0),
            leader_address: Some(s.leader_address.clone()).filter(|a| !a.is_empty()),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_index: s.last_index,
            snapshot_index: s.snapshot_index,
            snapshot_bytes: s.snapshot_bytes,
            state_hash: s.state_hash.clone(),
            members: s
                .members
                .iter()
                .map(|m| MemberView {
                    id: m.id,
                    address: m.address.clone(),
                    voter: m.voter,
                    leader: m.id == s.leader_id,
                    match_index: leading.then_some(m.match_index),
                    lag: leading.then(|| s.commit_index.saturating_sub(m.match_index)),
                })
                .collect(),
        }
    }
}

/// `cluster status` for people.
pub fn cluster_text(v: &ClusterView) -> String {
    let mut out = format!(
        "answered by: replica {} ({})\nleader:      {}\nterm:        {}\ncommit:      {}\napplied:     {}\nlast index:  {}\nsnapshot:    index {}, {} bytes\n\n",
        v.id,
        v.role,
        match (&v.leader_id, &v.leader_address) {
            (Some(id), Some(a)) => format!("replica {id} at {a}"),
            (Some(id), None) => format!("replica {id}"),
            _ => "none known".into(),
        },
        v.term,
        v.commit_index,
        v.applied_index,
        v.last_index,
        v.snapshot_index,
        v.snapshot_bytes,
    );
    let mut table = Table::new(["ID", "ADDRESS", "ROLE", "MATCH", "LAG"]);
    for m in &v.members {
        let role = match (m.leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        let known = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
        table.row([
            m.id.to_string(),
            m.address.clone(),
            role.to_string(),
            known(m.match_index),
            known(m.lag),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// What `cluster snapshot` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub index: u64,
    pub term: u64,
    pub bytes: u64,
    pub file: String,
}

impl<W: Write> Ctl<W> {
    fn print_cluster(&mut self, status: &ClusterStatus) -> Result<(), CommandError> {
        let view = ClusterView::from(status);
        match self.format {
            OutputFormat::Table => self.out.write_all(cluster_text(&view).as_bytes())?,
            OutputFormat::Json => writeln!(self.out, "{}", serde_json::to_string_pretty(&view)?)?,
        }
        self.out.flush()?;
        Ok(())
    }

    /// `cluster status`: members, leader, term, commit/applied index, lag.
    pub async fn cluster_status(&mut self) -> Result<ClusterStatus, CommandError> {
        let status = self
            .clients
            .cluster
            .get_status(GetClusterStatusRequest {
                with_state_hash: true,
            })
            .await?
            .into_inner();
        self.print_cluster(&status)?;
        Ok(status)
    }

    /// `cluster add-member`: learner first, voter once caught up.
    pub async fn add_member(&mut self, id: u64, address: &str) -> Result<(), CommandError> {
        let status = self
            .clients
            .cluster
            .add_member(AddMemberRequest {
                id,
                address: address.to_string(),
            })
            .await?
            .into_inner();
        self.print_cluster(&status)
    }

    pub async fn remove_member(&mut self, id: u64) -> Result<(), CommandError> {
        let status = self
            .clients
            .cluster
            .remove_member(RemoveMemberRequest { id })
            .await?
            .into_inner();
        self.print_cluster(&status)
    }

    pub async fn transfer_leader(&mut self, to: u64) -> Result<(), CommandError> {
        let status = self
            .clients
            .cluster
            .transfer_leader(TransferLeaderRequest { to })
            .await?
            .into_inner();
        self.print_cluster(&status)
    }

    /// `cluster snapshot --out FILE`: a snapshot taken now, kept as a backup.
    pub async fn cluster_snapshot(&mut self, file: &Path) -> Result<SnapshotView, CommandError> {
        let reply = self
            .clients
            .cluster
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        // Write beside the target and rename, so a crash never leaves half a backup.
        let tmp = file.with_extension("partial");
        std::fs::write(&tmp, &reply.data)?;
        std::fs::rename(&tmp, file)?;
        let view = SnapshotView {
            index: reply.index,
            term: reply.term,
            bytes: reply.data.len() as u64,
            file: file.display().to_string(),
        };
        match self.format {
            OutputFormat::Table => writeln!(
                self.out,
                "snapshot at log index {} (term {}): {} bytes written to {}",
                view.index, view.term, view.bytes, view.file
            )?,
            OutputFormat::Json => writeln!(self.out, "{}", serde_json::to_string_pretty(&view)?)?,
        }
        self.out.flush()?;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupool_proto::v1::ClusterMember;

    #[test]
    fn lag_is_known_only_from_a_leader() {
        let mut s = ClusterStatus {
            id: 1,
            role: ReplicaRole::Leader as i32,
            leader_id: 1,
            leader_address: "a:1".into(),
            commit_index: 10,
            members: vec![
                ClusterMember {
                    id: 1,
                    address: "a:1".into(),
                    voter: true,
                    match_index: 10,
                },
                ClusterMember {
                    id: 2,
                    address: "b:1".into(),
                    voter: true,
                    match_index: 7,
                },
            ],
            ..Default::default()
        };
        let v = ClusterView::from(&s);
        assert_eq!(v.members[1].lag, Some(3));
        assert!(v.members[0].leader);
        let text = cluster_text(&v);
        assert!(text.contains("replica 1 at a:1"), "{text}");
        s.role = ReplicaRole::Follower as i32;
        assert_eq!(ClusterView::from(&s).members[1].lag, None);
    }
}
