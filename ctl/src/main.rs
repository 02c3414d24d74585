//! `edupoolctl`: parse the command line, connect to a scheduler, run one
//! command, and turn any error into one line on stderr. Each command group
//! (`job`, `node`, `tenant`, ...) lives in its own file under `cmd/`.

use std::{io, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, ValueEnum};
use edupoolctl::{
    client::{self, ConnectOptions, DEFAULT_ENDPOINT},
    commands::{CommandError, Ctl},
    failover::{self, Failover, Verdict},
    output::OutputFormat,
    usage::UsageFormat,
};

mod cmd;

use cmd::Command;

/// The edupool command-line tool: submit and follow GPU jobs, and (for
/// admins) manage nodes and tenants.
#[derive(Debug, Parser)]
#[command(name = "edupoolctl", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Scheduler endpoints, tried in order until one answers (comma-separated;
    /// a bare host:port means http://host:port)
    #[arg(
        long,
        global = true,
        env = "EDUPOOL_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        value_delimiter = ',',
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    endpoint: Vec<String>,

    /// Bearer token of a tenant or an admin
    #[arg(
        long,
        global = true,
        env = "EDUPOOL_TOKEN",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    token: Option<String>,

    /// How to print results: aligned tables for people, JSON for scripts
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Format::Table,
        help_heading = "Global options"
    )]
    output: Format,

    /// Let any replica answer reads from its own state, which may lag the
    /// leader by a moment; without it reads are linearizable
    #[arg(long, global = true, help_heading = "Global options")]
    stale_ok: bool,

    /// Speak TLS to the scheduler, trusting this CA certificate (PEM);
    /// bare host:port endpoints then mean https://host:port
    #[arg(
        long,
        global = true,
        env = "EDUPOOL_CA_CERT",
        value_name = "FILE",
        help_heading = "Global options"
    )]
    ca_cert: Option<PathBuf>,

    /// Give up after this long in all, e.g. 30s or 2m: a call that fails
    /// in a way that is safe to retry is tried again on the other
    /// endpoints, with backoff, until then
    #[arg(
        long,
        global = true,
        env = "EDUPOOL_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION",
        help_heading = "Global options"
    )]
    timeout: Duration,

    /// The deadline of each call to a replica, e.g. 10s: a replica that
    /// does not answer within it (paused, cut off) is left for the next
    #[arg(
        long,
        global = true,
        env = "EDUPOOL_ATTEMPT_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION",
        help_heading = "Global options"
    )]
    attempt_timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    /// Comma-separated values (`usage report`, `usage settlement`, `usage export`)
    Csv,
}

impl From<Format> for OutputFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Table => OutputFormat::Table,
            Format::Json => OutputFormat::Json,
            // Only usage commands accept csv (checked before connecting).
            Format::Csv => OutputFormat::Table,
        }
    }
}

impl From<Format> for UsageFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Table => UsageFormat::Table,
            Format::Json => UsageFormat::Json,
            Format::Csv => UsageFormat::Csv,
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    if matches!(global.output, Format::Csv) && !matches!(command, Command::Usage(_)) {
        anyhow::bail!(
            "--output csv is only for `usage report`, `usage settlement` and `usage export`"
        );
    }
    // A bad job file is reported before any connection is made.
    let submission = match &command {
        Command::Job(job) => job.submission()?,
        _ => None,
    };
    if let Command::Pki(pki) = &command {
        return pki.run(global.output.into());
    }
    let tls = global
        .ca_cert
        .as_deref()
        .map(client::ClientTls::from_file)
        .transpose()?;
    let options = ConnectOptions {
        stale_ok: global.stale_ok,
        tls,
        attempt_timeout: Some(global.attempt_timeout),
    };
    let auth = client::BearerToken::new(global.token.as_deref())?.stale_ok(global.stale_ok);
    let mut failover = Failover::new(&global.endpoint, auth, options, global.timeout);
    let repeatable = command.is_repeatable();
    loop {
        let Some(clients) = failover.connect().await? else {
            if failover.untrusted() {
                return Err(failover.unreachable().into());
            }
            if !failover.pause(None).await {
                return Err(failover.gave_up().into());
            }
            continue;
        };
        let endpoint = clients.endpoint.clone();
        let mut ctl = Ctl::new(clients, global.output.into(), io::stdout());
        let result = command
            .run(&mut ctl, submission.as_ref(), global.output.into())
            .await;
        let Some(status) = result.as_ref().err().and_then(rpc_status) else {
            return result;
        };
        let Verdict::Retry { leader, after } = failover::verdict(status, repeatable) else {
            return result;
        };
        failover.failed(&endpoint, status, leader);
        if !failover.pause(after).await {
            return Err(failover.gave_up().into());
        }
    }
}

/// The gRPC status a command failed with, if it failed in a call.
fn rpc_status(error: &anyhow::Error) -> Option<&tonic::Status> {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<CommandError>())
        .find_map(CommandError::status)
}

/// One line for a person. The library's errors carry their causes in their
/// own message, so the chain is printed without repeats.
fn describe(error: &anyhow::Error, has_token: bool) -> String {
    let mut text = error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    let unauthenticated = error
        .chain()
        .filter_map(|e| e.downcast_ref::<CommandError>())
        .filter_map(CommandError::status)
        .any(|s| s.code() == tonic::Code::Unauthenticated);
    if unauthenticated && !has_token {
        text.push_str("; give a token with --token or EDUPOOL_TOKEN");
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<CommandError>()
            .is_some_and(CommandError::is_broken_pipe)
            || e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let has_token = cli
        .global
        .token
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing left to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e, has_token));
            ExitCode::FAILURE
        }
    }
}
