//! `edupoolctl`: parse the command line, connect to a scheduler, run one
//! command from the library, and turn any error into one line on stderr.

use std::{io, path::PathBuf, process::ExitCode, time::Duration};

use clap::{
    builder::{PossibleValuesParser, TypedValueParser as _},
    Args, Parser, Subcommand, ValueEnum,
};
use edupool_proto::v1::{JobSpec, JobState, LogStream};
use edupoolctl::{
    client::{self, DEFAULT_ENDPOINT},
    commands::{CommandError, Ctl, JobFilter, NodeAction},
    jobfile::{self, Class, JobFile, NodeLostPolicy},
    output::OutputFormat,
    parse_job_state, JOB_STATE_NAMES,
};

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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

impl From<Format> for OutputFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Table => OutputFormat::Table,
            Format::Json => OutputFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit, list, inspect and cancel jobs; read their logs
    #[command(subcommand)]
    Job(JobCommand),
    /// List nodes and take them in and out of service (admins)
    #[command(subcommand)]
    Node(NodeCommand),
    /// Create and list tenants (admins)
    #[command(subcommand)]
    Tenant(TenantCommand),
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job from a job file or from flags; prints its id
    #[command(after_help = "Examples:\n  \
        edupoolctl job submit -f train.yaml\n  \
        edupoolctl job submit --gpus 2 --class training --walltime 2h -- python3 train.py --epochs 3")]
    Submit(SubmitArgs),
    /// List jobs
    List {
        /// Only jobs in these states (comma-separated or repeated)
        #[arg(
            long,
            value_delimiter = ',',
            value_parser = PossibleValuesParser::new(JOB_STATE_NAMES)
                .try_map(|s| parse_job_state(&s).ok_or(format!("unknown state {s:?}")))
        )]
        state: Vec<JobState>,
        /// Only this tenant's jobs (admins)
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many jobs
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show a job in detail
    Get {
        /// The job's id
        id: String,
    },
    /// Cancel a job; a running one gets SIGTERM, then SIGKILL after its grace period
    Cancel {
        /// The job's id
        id: String,
        /// Why, recorded with the job
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print a job's output (raw bytes, whatever --output says)
    Logs {
        /// The job's id
        id: String,
        /// Print standard error instead of standard output
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output until the job has finished
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print each change of a job's state until it ends
    Watch {
        /// The job's id
        id: String,
    },
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// A job file (.yaml, .yml or .toml); flags given with it override its fields
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,

    /// Whole GPUs on one node [required without -f]
    #[arg(long, required_unless_present = "file", value_name = "N")]
    gpus: Option<u32>,

    /// A name for the job: letters, digits, '-', '_' and '.'
    #[arg(long)]
    name: Option<String>,

    /// Priority class [default without -f: batch]
    #[arg(
        long,
        value_parser = PossibleValuesParser::new(Class::ALL.map(Class::name))
            .try_map(|s| s.parse::<Class>())
    )]
    class: Option<Class>,

    /// Stop the job after this long, e.g. 90m or 2h [default: the pool's]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    walltime: Option<Duration>,

    /// Time between SIGTERM and SIGKILL when stopping, e.g. 30s [default: the pool's]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace_period: Option<Duration>,

    /// An environment variable for the job (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// What to do if the job's node is lost [default without -f: requeue]
    #[arg(
        long,
        value_name = "POLICY",
        value_parser = PossibleValuesParser::new(["requeue", "fail"])
            .try_map(|s| s.parse::<NodeLostPolicy>())
    )]
    on_node_lost: Option<NodeLostPolicy>,

    /// How many times the job may be requeued after losing its node
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,

    /// The program and its arguments, after `--` [required without -f]
    #[arg(last = true, value_name = "COMMAND", required_unless_present = "file")]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes, their GPUs and their state
    List,
    /// Place no new jobs on a node; running jobs go on
    Cordon {
        /// The node's name
        name: String,
    },
    /// Let a cordoned or drained node take new jobs again
    Uncordon {
        /// The node's name
        name: String,
    },
    /// Cordon a node and let its running jobs finish; it is empty once RUNNING is 0
    Drain {
        /// The node's name
        name: String,
    },
    /// Put a GPU marked unhealthy back into placement, once its agent
    /// reports it healthy again after a reset
    ClearGpu {
        /// The node's name
        name: String,
        /// The GPU's UUID, as `node list` shows it
        gpu_uuid: String,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its token, which is shown only once
    Create {
        /// The tenant's name
        name: String,
    },
    /// List tenants and what they use
    List,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The job file (if any) with the flags laid over it.
fn build_spec(args: SubmitArgs) -> anyhow::Result<JobSpec> {
    let mut file = match &args.file {
        Some(path) => jobfile::load(path)?,
        None => JobFile::new(Vec::new(), 0),
    };
    if !args.command.is_empty() {
        file.command = args.command;
    }
    if let Some(gpus) = args.gpus {
        file.gpus = gpus;
    }
    if let Some(name) = args.name {
        file.name = Some(name);
    }
    if let Some(class) = args.class {
        file.class = class;
    }
    if let Some(walltime) = args.walltime {
        file.walltime = Some(walltime);
    }
    if let Some(grace) = args.grace_period {
        file.grace_period = Some(grace);
    }
    if let Some(policy) = args.on_node_lost {
        file.on_node_lost = policy;
    }
    if let Some(retries) = args.max_retries {
        file.max_retries = Some(retries);
    }
    file.env.extend(args.env);
    Ok(file.to_spec()?)
}

async fn connect(global: &Global) -> anyhow::Result<Ctl<io::Stdout>> {
    let clients = client::connect(&global.endpoint, global.token.as_deref()).await?;
    Ok(Ctl::new(clients, global.output.into(), io::stdout()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    let command = match command {
        Command::Job(JobCommand::Submit(args)) => {
            // A bad job file is reported before any connection is made.
            let spec = build_spec(args)?;
            connect(&global).await?.submit_job(spec).await?;
            return Ok(());
        }
        other => other,
    };
    let mut ctl = connect(&global).await?;
    match command {
        Command::Job(JobCommand::Submit(_)) => unreachable!("handled above"),
        Command::Job(JobCommand::List {
            state,
            tenant,
            limit,
        }) => {
            ctl.list_jobs(JobFilter {
                states: state,
                tenant,
                limit,
            })
            .await?;
        }
        Command::Job(JobCommand::Get { id }) => {
            ctl.get_job(&id).await?;
        }
        Command::Job(JobCommand::Cancel { id, reason }) => {
            ctl.cancel_job(&id, reason.as_deref().unwrap_or_default())
                .await?;
        }
        Command::Job(JobCommand::Logs { id, stderr, follow }) => {
            let stream = if stderr {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            ctl.job_logs(&id, stream, follow).await?;
        }
        Command::Job(JobCommand::Watch { id }) => {
            ctl.watch_job(&id).await?;
        }
        Command::Node(NodeCommand::List) => {
            ctl.list_nodes().await?;
        }
        Command::Node(NodeCommand::Cordon { name }) => {
            ctl.node_action(&name, NodeAction::Cordon).await?;
        }
        Command::Node(NodeCommand::Uncordon { name }) => {
            ctl.node_action(&name, NodeAction::Uncordon).await?;
        }
        Command::Node(NodeCommand::Drain { name }) => {
            ctl.node_action(&name, NodeAction::Drain).await?;
        }
        Command::Node(NodeCommand::ClearGpu { name, gpu_uuid }) => {
            ctl.clear_gpu(&name, &gpu_uuid).await?;
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            ctl.create_tenant(&name).await?;
        }
        Command::Tenant(TenantCommand::List) => {
            ctl.list_tenants().await?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("edupoolctl").chain(args.iter().copied()))
    }

    fn submit_spec(args: &[&str]) -> anyhow::Result<JobSpec> {
        let cli = parse(args)?;
        let Command::Job(JobCommand::Submit(submit)) = cli.command else {
            panic!("not a submit")
        };
        build_spec(submit)
    }

    #[test]
    fn inline_submit_builds_a_spec() {
        let spec = submit_spec(&[
            "job",
            "submit",
            "--gpus",
            "2",
            "--name",
            "t1",
            "--class",
            "training",
            "--walltime",
            "1h",
            "--grace-period",
            "30s",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--on-node-lost",
            "fail",
            "--max-retries",
            "2",
            "--",
            "python3",
            "train.py",
            "--epochs",
            "3",
        ])
        .unwrap();
        assert_eq!(spec.command, ["python3", "train.py", "--epochs", "3"]);
        assert_eq!(spec.gpus, 2);
        assert_eq!(spec.name, "t1");
        assert_eq!(spec.class(), edupool_proto::v1::JobClass::Training);
        assert_eq!(spec.walltime_seconds, 3600);
        assert_eq!(spec.grace_period_seconds, 30);
        assert_eq!(spec.env["A"], "1");
        assert_eq!(spec.env["B"], "x=y");
        assert_eq!(spec.on_node_lost(), edupool_proto::v1::OnNodeLost::Fail);
        assert_eq!(spec.max_retries, 2);
    }

    #[test]
    fn inline_submit_needs_gpus_and_a_command() {
        let err = parse(&["job", "submit", "--", "true"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&["job", "submit", "--gpus", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err =
            parse(&["job", "submit", "--gpus", "1", "--class", "gold", "--", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let err = submit_spec(&["job", "submit", "--gpus", "0", "--", "x"]).unwrap_err();
        assert_eq!(err.to_string(), "gpus must be at least 1");
    }

    #[test]
    fn flags_override_the_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.yaml");
        std::fs::write(&path, "command: [a]\ngpus: 1\nenv: { X: '1' }\n").unwrap();
        let path = path.to_str().unwrap();
        let spec = submit_spec(&["job", "submit", "-f", path, "--gpus", "4", "-e", "Y=2"]).unwrap();
        assert_eq!(spec.command, ["a"]);
        assert_eq!(spec.gpus, 4);
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn global_flags_and_list_filters() {
        let cli = parse(&[
            "job",
            "list",
            "--state",
            "pending,running",
            "--state",
            "failed",
            "--limit",
            "5",
            "--endpoint",
            "a:1,b:2",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoint, ["a:1", "b:2"]);
        assert!(matches!(cli.global.output, Format::Json));
        let Command::Job(JobCommand::List { state, limit, .. }) = cli.command else {
            panic!("not a list")
        };
        assert_eq!(
            state,
            [JobState::Pending, JobState::Running, JobState::Failed]
        );
        assert_eq!(limit, Some(5));
        assert!(parse(&["job", "list", "--state", "done"]).is_err());
    }
}
