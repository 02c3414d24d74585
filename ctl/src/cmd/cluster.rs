//! `edupoolctl cluster ...`: the scheduler's replicas: status, members,
//! leadership, backups.

use std::{io, path::PathBuf};

use clap::Subcommand;
use edupoolctl::commands::Ctl;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term, commit and applied index, and each member's lag
    Status,
    /// Add a replica (started with --join): it catches up as a learner,
    /// then becomes a voter (admins)
    AddMember {
        /// The new replica's id (its --id)
        id: u64,
        /// Where it serves, host:port
        address: String,
    },
    /// Remove a replica from the cluster (admins)
    RemoveMember {
        /// The replica's id
        id: u64,
    },
    /// Hand leadership to another voter (admins)
    TransferLeader {
        /// The voter that should lead
        to: u64,
    },
    /// Take a snapshot now and save it as a backup file (admins); restore
    /// it with `edupool-scheduler serve --restore-from FILE`
    Snapshot {
        /// Where to write the backup
        #[arg(long, short = 'f', value_name = "FILE")]
        out: PathBuf,
    },
}

impl ClusterCommand {
    /// Whether running it twice does no harm: `status` and `snapshot`.
    pub fn is_repeatable(&self) -> bool {
        matches!(
            self,
            ClusterCommand::Status | ClusterCommand::Snapshot { .. }
        )
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            ClusterCommand::Status => {
                ctl.cluster_status().await?;
            }
            ClusterCommand::AddMember { id, address } => {
                ctl.add_member(*id, address).await?;
            }
            ClusterCommand::RemoveMember { id } => {
                ctl.remove_member(*id).await?;
            }
            ClusterCommand::TransferLeader { to } => {
                ctl.transfer_leader(*to).await?;
            }
            ClusterCommand::Snapshot { out } => {
                ctl.cluster_snapshot(out).await?;
            }
        }
        Ok(())
    }
}
