//! `edupoolctl pki ...`: the alliance's CA and the certificates of nodes,
//! replicas and servers. Works on files; talks to no scheduler.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use edupoolctl::{
    output::OutputFormat,
    pki::{Ca, CertKind, Validity},
};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the CA: ca.pem (give it to every client, agent and replica)
    /// and ca-key.pem (0600; keep it offline)
    Init {
        #[command(flatten)]
        files: PkiFiles,
        /// The CA's name
        #[arg(long, default_value = "edupool alliance CA")]
        name: String,
        /// How many days the CA is valid
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue an agent's certificate, node:NAME (client authentication):
    /// node-NAME.pem and node-NAME-key.pem
    IssueNode {
        /// The node's name, as the agent's --node-name
        name: String,
        #[command(flatten)]
        files: PkiFiles,
        /// How many days it is valid (0: already expired, for tests)
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a scheduler replica's certificate, peer:ID (server and raft
    /// client authentication): peer-ID.pem and peer-ID-key.pem
    IssuePeer {
        /// The replica's --id
        id: u64,
        #[command(flatten)]
        hosts: PkiHosts,
        #[command(flatten)]
        files: PkiFiles,
        /// How many days it is valid (0: already expired, for tests)
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a scheduler's server certificate (no replica identity):
    /// server.pem and server-key.pem
    IssueServer {
        #[command(flatten)]
        hosts: PkiHosts,
        #[command(flatten)]
        files: PkiFiles,
        /// How many days it is valid (0: already expired, for tests)
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Debug, Args)]
pub struct PkiFiles {
    /// The directory of ca.pem and ca-key.pem
    #[arg(long, default_value = "pki", value_name = "DIR")]
    dir: PathBuf,
    /// Where to write the new files [default: --dir]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace files that exist
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct PkiHosts {
    /// A DNS name clients and replicas reach the scheduler by (repeatable)
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// An IP address clients and replicas reach the scheduler at (repeatable)
    #[arg(long = "ip", value_name = "ADDR")]
    ip: Vec<std::net::IpAddr>,
}

impl PkiHosts {
    fn all(&self) -> Vec<String> {
        let ips = self.ip.iter().map(|ip| ip.to_string());
        self.dns.iter().cloned().chain(ips).collect()
    }
}

impl PkiCommand {
    /// Makes the files and lists what it wrote.
    pub fn run(&self, output: OutputFormat) -> anyhow::Result<()> {
        let written = match self {
            PkiCommand::Init { files, name, days } => {
                let ca = Ca::generate(name, Validity::days(*days))?;
                let out = files.out.as_ref().unwrap_or(&files.dir);
                ca.write(out, files.force)?
            }
            PkiCommand::IssueNode { name, files, days } => {
                issue(files, &CertKind::Node(name.clone()), *days)?
            }
            PkiCommand::IssuePeer {
                id,
                hosts,
                files,
                days,
            } => {
                let kind = CertKind::Peer {
                    id: *id,
                    hosts: hosts.all(),
                };
                issue(files, &kind, *days)?
            }
            PkiCommand::IssueServer { hosts, files, days } => {
                let kind = CertKind::Server { hosts: hosts.all() };
                issue(files, &kind, *days)?
            }
        };
        let [cert, key] = written.map(|p| p.display().to_string());
        match output {
            OutputFormat::Json => {
                println!("{}", serde_json::json!({ "certificate": cert, "key": key }));
            }
            OutputFormat::Table => println!("wrote {cert}\nwrote {key} (private: mode 0600)"),
        }
        Ok(())
    }
}

fn issue(files: &PkiFiles, kind: &CertKind, days: u32) -> anyhow::Result<[PathBuf; 2]> {
    let ca = Ca::load(&files.dir)?;
    let issued = ca.issue(kind, Validity::days(days))?;
    let out = files.out.as_ref().unwrap_or(&files.dir);
    Ok(issued.write(out, &kind.file_stem(), files.force)?)
}
