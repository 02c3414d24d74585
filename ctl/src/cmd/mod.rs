//! The command groups of `edupoolctl`, one file each: its clap arguments,
//! whether it is safe to repeat, and its `run`.

mod audit;
mod budget;
mod cluster;
mod image;
mod job;
mod node;
mod pki;
mod price;
mod tenant;
mod token;
mod usage;

#[cfg(test)]
mod tests;

use std::io;

use clap::Subcommand;
use edupoolctl::{commands::Ctl, usage::UsageFormat};

pub use self::{
    audit::AuditCommand,
    budget::BudgetCommand,
    cluster::ClusterCommand,
    image::ImageCommand,
    job::{JobCommand, Submission},
    node::NodeCommand,
    pki::PkiCommand,
    price::PriceCommand,
    tenant::TenantCommand,
    token::TokenCommand,
    usage::UsageCommand,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit, list, inspect and cancel jobs; read their logs
    #[command(subcommand)]
    Job(JobCommand),
    /// List nodes and take them in and out of service (admins)
    #[command(subcommand)]
    Node(NodeCommand),
    /// The images in the nodes' stores, and which nodes have each
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create, list, configure and suspend tenants (admins)
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The scheduler's replicas: status, members, leadership, backups
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Usage reports, the settlement between members, the ledger export
    #[command(subcommand)]
    Usage(UsageCommand),
    /// The price book: GPU-hour and energy prices, discounts, lending credit
    #[command(subcommand)]
    Price(PriceCommand),
    /// Tenants' spending limits per period
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// API tokens with roles: create (the secret is shown once), list, revoke
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit trail of admin and job-control actions (admins, auditors)
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The alliance's CA and the certificates of nodes, replicas and
    /// servers (works on files; talks to no scheduler)
    #[command(subcommand)]
    Pki(PkiCommand),
}

impl Command {
    /// Whether running the command twice does no harm: reads, and a
    /// submit (its request id makes a repeat return the first job).
    pub fn is_repeatable(&self) -> bool {
        match self {
            Command::Job(c) => c.is_repeatable(),
            Command::Node(c) => c.is_repeatable(),
            Command::Image(c) => c.is_repeatable(),
            Command::Tenant(c) => c.is_repeatable(),
            Command::Cluster(c) => c.is_repeatable(),
            Command::Usage(c) => c.is_repeatable(),
            Command::Price(c) => c.is_repeatable(),
            Command::Budget(c) => c.is_repeatable(),
            Command::Token(c) => c.is_repeatable(),
            Command::Audit(c) => c.is_repeatable(),
            Command::Pki(_) => false,
        }
    }

    /// Runs the command against a connected scheduler. `submission` is
    /// what [`JobCommand::submission`] made of a submit before connecting.
    pub async fn run(
        &self,
        ctl: &mut Ctl<io::Stdout>,
        submission: Option<&Submission>,
        usage_format: UsageFormat,
    ) -> anyhow::Result<()> {
        match self {
            Command::Job(c) => c.run(ctl, submission).await,
            Command::Node(c) => c.run(ctl).await,
            Command::Image(c) => c.run(ctl).await,
            Command::Tenant(c) => c.run(ctl).await,
            Command::Cluster(c) => c.run(ctl).await,
            Command::Usage(c) => c.run(ctl, usage_format).await,
            Command::Price(c) => c.run(ctl).await,
            Command::Budget(c) => c.run(ctl).await,
            Command::Token(c) => c.run(ctl).await,
            Command::Audit(c) => c.run(ctl).await,
            Command::Pki(_) => anyhow::bail!("pki commands work on files and need no scheduler"),
        }
    }
}
