//! `edupoolctl`: parse the command line, connect to a scheduler, run one
//! command from the library, and turn any error into one line on stderr.

use std::{io, path::PathBuf, process::ExitCode, time::Duration};

use clap::{
    builder::{PossibleValuesParser, TypedValueParser as _},
    Args, Parser, Subcommand, ValueEnum,
};
use edupool_proto::v1::{
    JobSpec, JobState, LogStream, NodeLabels, SetBudgetRequest, SetPricesRequest,
};
use edupoolctl::{
    audit::RefusedFilter,
    client::{self, ConnectOptions, DEFAULT_ENDPOINT},
    commands::{CommandError, Ctl, JobFilter, NodeAction},
    failover::{self, Failover, Verdict},
    jobfile::{self, Class, JobFile, NodeLostPolicy},
    output::OutputFormat,
    parse_job_state,
    policy::{parse_weight, Count},
    security::{AuditFilter, NewToken},
    usage::{self, UsageFormat},
    JOB_STATE_NAMES,
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit, list, inspect and cancel jobs; read their logs
    #[command(subcommand)]
    Job(JobCommand),
    /// List nodes and take them in and out of service (admins)
    #[command(subcommand)]
    Node(NodeCommand),
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

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints its secret, which is shown only once
    #[command(after_help = "Examples:\n  \
        edupoolctl token create --role member --tenant zju --name alice --expires 30d\n  \
        edupoolctl token create --role auditor --name compliance")]
    Create {
        /// What the token may do (see docs/security.md, "Roles")
        #[arg(long, value_parser = PossibleValuesParser::new(
            ["admin", "tenant-admin", "member", "auditor", "agent"]))]
        role: String,
        /// The tenant of a tenant-admin or member token
        #[arg(long)]
        tenant: Option<String>,
        /// Who or what the token is for
        #[arg(long)]
        name: Option<String>,
        /// Refuse the token after this long, e.g. 30d or 12h [default: never]
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// List tokens (never their secrets)
    List {
        /// Only this tenant's tokens
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token: every replica refuses it once it has applied this
    Revoke {
        /// The token's id, as `token list` shows it
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List audit records, oldest first (the newest --limit that match)
    #[command(after_help = "Examples:\n  \
        edupoolctl audit list --tenant zju --since 24h\n  \
        edupoolctl audit list --action job. --output json")]
    List {
        /// Records of this tenant's tokens or about its jobs
        #[arg(long)]
        tenant: Option<String>,
        /// Records of this token (id or name)
        #[arg(long)]
        actor: Option<String>,
        /// This action (e.g. job.cancel), or a prefix ending in '.' (e.g. token.)
        #[arg(long)]
        action: Option<String>,
        /// From this time: RFC 3339 or a duration ago (2h, 7d)
        #[arg(long, value_parser = edupoolctl::security::parse_time, value_name = "TIME")]
        since: Option<i64>,
        /// Up to this time: RFC 3339 or a duration ago
        #[arg(long, value_parser = edupoolctl::security::parse_time, value_name = "TIME")]
        until: Option<i64>,
        /// At most this many records [default: 1000]
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Every accepted record after a sequence number, oldest first, one
    /// JSON line each; fails, naming the range, if some were dropped
    #[command(after_help = "Examples:\n  \
        edupoolctl audit export --after 0 >> audit.jsonl\n  \
        edupoolctl audit export --after \"$(tail -n1 audit.jsonl | jq .seq)\" --follow >> audit.jsonl")]
    Export {
        /// Records after this sequence number (0: from the first)
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        after: u64,
        /// Keep going: poll for new records until stopped
        #[arg(long)]
        follow: bool,
        /// How often --follow asks for new records
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        poll: Duration,
    },
    /// Refused calls (rejected or denied), counted per caller, action and
    /// result, most recently seen first
    Refused {
        /// Calls of this tenant's tokens
        #[arg(long)]
        tenant: Option<String>,
        /// Calls of this token (id or name)
        #[arg(long)]
        actor: Option<String>,
        /// This action, or a prefix ending in '.'
        #[arg(long)]
        action: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
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
struct PkiFiles {
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
struct PkiHosts {
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

#[derive(Debug, Subcommand)]
enum ClusterCommand {
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

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job from a job file or from flags; prints its id
    #[command(after_help = "Examples:\n  \
        edupoolctl job submit -f train.yaml\n  \
        edupoolctl job submit --gpus 2 --class training --walltime 2h -- python3 train.py --epochs 3")]
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first (without command and env; `job get` has them)
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
        /// At most this many jobs, the newest [default: all]
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
    /// Say why a job is where it is: for a pending job, the rule that holds
    /// it back (guarantee, borrow limit, class cap, reservation, capacity)
    Explain {
        /// The job's id
        id: String,
    },
}

#[derive(Debug, Clone, Args)]
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

    /// A secret environment variable (repeatable): the job gets it, reads
    /// show *** (prefer --secret-env-file: a flag is in the process list)
    #[arg(long = "secret-env", value_name = "KEY=VALUE", value_parser = parse_secret_env)]
    secret_env: Vec<(String, String)>,

    /// Secret environment variables from a file of KEY=VALUE lines
    #[arg(long = "secret-env-file", value_name = "FILE")]
    secret_env_file: Option<PathBuf>,

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

    /// Submit a job array: N jobs of this spec, each told its index in
    /// EDUPOOL_ARRAY_INDEX (0 to N-1), with EDUPOOL_ARRAY_SIZE and
    /// EDUPOOL_ARRAY_JOB_ID (the first job's id); all are submitted or none
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    array: Option<u32>,

    /// Names this submission so that repeating it (this command run again
    /// with the same id, within 24 hours) returns the same job instead of
    /// a second one: 1-128 of A-Z a-z 0-9 - _ . : [default: a fresh id,
    /// kept across this command's own retries]
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,

    /// The program and its arguments, after `--` [required without -f]
    #[arg(last = true, value_name = "COMMAND", required_unless_present = "file")]
    command: Vec<String>,

    #[command(flatten)]
    policy: PolicyArgs,
}

/// The job's policy fields (docs/policy.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Placement")]
struct PolicyArgs {
    /// Run as a gang of N tasks of --gpus GPUs each, one per node, all in one site
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,

    /// Order among your own jobs of one class; higher first
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i32>,

    /// Thousandths of one GPU (1-999), for small work; needs --gpus 1
    #[arg(long, value_name = "MILLI")]
    gpu_fraction: Option<u32>,

    /// Only GPUs of this exact model, e.g. A100-80GB
    #[arg(long, value_name = "MODEL")]
    gpu_model: Option<String>,

    /// Only GPUs of this class (model family), e.g. A100
    #[arg(long, value_name = "CLASS")]
    gpu_class: Option<String>,

    /// Only GPUs with at least this much memory, in GiB
    #[arg(long, value_name = "GIB")]
    min_gpu_memory_gib: Option<u64>,

    /// Only nodes of this site
    #[arg(long)]
    site: Option<String>,

    /// Nodes of this site first, others if none fits
    #[arg(long, value_name = "SITE")]
    preferred_site: Option<String>,

    /// Data classification level 0-3; only nodes certified at or above it run the job
    #[arg(long, value_name = "LEVEL")]
    data_level: Option<u32>,

    /// End the job failed if it is preempted, instead of requeueing it
    #[arg(long)]
    no_requeue_on_preempt: bool,
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
    /// Set a node's labels (all of them: a label left out is cleared)
    #[command(after_help = "Example:\n  \
        edupoolctl node label gpu-07 --owner zju --site hangzhou --data-level 2")]
    Label {
        /// The node's name
        name: String,
        /// The member that contributed it; its healthy GPUs count towards that member's guarantee
        #[arg(long, value_name = "TENANT")]
        owner: Option<String>,
        /// The node's site [default: default]
        #[arg(long)]
        site: Option<String>,
        /// The highest data classification level (0-3) it is certified for
        #[arg(long, value_name = "LEVEL", default_value_t = 0)]
        data_level: u32,
        /// Override the GPU class derived from the model (A100-80GB is class A100)
        #[arg(long, value_name = "CLASS")]
        gpu_class: Option<String>,
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
    /// Show a tenant's guarantee, use, borrowing, lending, fair-share usage and queue
    Show {
        /// The tenant's name
        name: String,
    },
    /// Set a tenant's quota for one GPU class
    #[command(after_help = "Examples:\n  \
        edupoolctl tenant set-quota zju --class A100 --guaranteed 16 --borrow-limit 8\n  \
        edupoolctl tenant set-quota hdu --class A100 --guaranteed auto --borrow-limit unlimited")]
    SetQuota {
        /// The tenant's name
        name: String,
        /// The GPU class, e.g. A100
        #[arg(long = "class", value_name = "CLASS")]
        gpu_class: String,
        /// Guaranteed GPUs, or `auto`: the healthy GPUs of the nodes it owns
        #[arg(long, value_name = "N|auto", default_value = "auto",
              value_parser = |s: &str| Count::parse(s, &["auto"]))]
        guaranteed: Count,
        /// GPUs it may borrow above the guarantee, or `unlimited`
        #[arg(long, value_name = "N|unlimited", default_value = "unlimited",
              value_parser = |s: &str| Count::parse(s, &["unlimited"]))]
        borrow_limit: Count,
    },
    /// Set a tenant's fair-share weight and equity multiplier
    SetShare {
        /// The tenant's name
        name: String,
        /// Fair-share weight, e.g. 1.5 [default: unchanged]
        #[arg(long, value_parser = parse_weight)]
        weight: Option<u32>,
        /// Multiplier on the weight for under-resourced members, e.g. 2 [default: unchanged]
        #[arg(long, value_parser = parse_weight)]
        equity: Option<u32>,
    },
    /// Cap how many GPUs of its guarantee one job class of a tenant may hold
    SetCap {
        /// The tenant's name
        name: String,
        /// The job class
        #[arg(
            long,
            value_parser = PossibleValuesParser::new(Class::ALL.map(Class::name))
                .try_map(|s| s.parse::<Class>())
        )]
        job_class: Class,
        /// The cap in GPUs, or `none` to remove it
        #[arg(long, value_name = "N|none",
              value_parser = |s: &str| Count::parse(s, &["none"]))]
        max_gpus: Count,
    },
    /// The kill switch: refuse the tenant's submissions and stop placing its
    /// pending jobs; with --stop-running also stop its running jobs now
    Suspend {
        /// The tenant's name
        name: String,
        /// Stop its running jobs at once (SIGTERM, then SIGKILL after their grace period)
        #[arg(long)]
        stop_running: bool,
        /// Why; submitters are told this
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let a suspended tenant submit again and its pending jobs be placed
    Resume {
        /// The tenant's name
        name: String,
    },
}

/// A time range `[from, to)`; a run counts in the range in which it ended.
#[derive(Debug, Args)]
struct Range {
    /// Start, inclusive: 2026-11-01 (midnight UTC) or 2026-11-01T08:00:00Z
    /// [default: the start of this month, UTC]
    #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
    from: Option<i64>,
    /// End, exclusive [default: now]
    #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
    to: Option<i64>,
}

impl Range {
    fn start_ms(&self) -> i64 {
        self.from
            .unwrap_or_else(|| usage::month_start(std::time::SystemTime::now()))
    }

    fn to_ms(&self) -> i64 {
        self.to.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportBy {
    Day,
    Job,
    Model,
    Class,
}

#[derive(Debug, Subcommand)]
enum UsageCommand {
    /// GPU-hours, energy and charges, grouped; tenants see only their own
    #[command(after_help = "Examples:\n  \
        edupoolctl usage report --from 2026-11-01 --to 2026-12-01 --by model\n  \
        edupoolctl usage report --tenant uni-b --from 2026-11-01 -o csv")]
    Report {
        /// The tenant [default: your own; admins: every tenant]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        range: Range,
        /// How to group the runs
        #[arg(long, value_enum, default_value_t = ReportBy::Day)]
        by: ReportBy,
    },
    /// Per member: what it owes for use of others' GPUs, is owed for
    /// lending its own, and the net (admins)
    Settlement {
        #[command(flatten)]
        range: Range,
    },
    /// One CSV row per ledger entry with its charge (-o json for JSON)
    Export {
        /// The tenant [default: your own; admins: every tenant]
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        range: Range,
    },
}

#[derive(Debug, Subcommand)]
enum PriceCommand {
    /// Add a price version (admins); what is not given carries over from the
    /// latest version
    #[command(after_help = "Examples:\n  \
        edupoolctl price set --currency CNY --gpu-hour A100-80GB=8 --gpu-hour A100-80GB:batch=6 \\\n      \
        --energy-per-kwh 0.8 --free-gpu-hours 1 --equity-discount uni-b=20 --lending-credit 70\n  \
        edupoolctl price set --effective-from 2026-11-10 --gpu-hour A100-80GB=10")]
    Set {
        /// When the version takes effect; never in the past [default: now]
        #[arg(long, value_parser = usage::parse_time, value_name = "TIME")]
        effective_from: Option<i64>,
        /// ISO 4217 code, required the first time and fixed afterwards
        #[arg(long)]
        currency: Option<String>,
        /// Price of a GPU-hour of a model, for one job class or all:
        /// MODEL[:CLASS]=AMOUNT (repeatable)
        #[arg(long, value_parser = usage::parse_gpu_price, value_name = "MODEL[:CLASS]=AMOUNT")]
        gpu_hour: Vec<edupool_proto::v1::GpuHourPrice>,
        /// Price of a kWh of GPU energy
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        energy_per_kwh: Option<i64>,
        /// GPU-hours free to each tenant per calendar month
        #[arg(long, value_parser = usage::parse_money, value_name = "HOURS")]
        free_gpu_hours: Option<i64>,
        /// Percent off a tenant's bill: TENANT=PERCENT, 0 removes it (repeatable)
        #[arg(long, value_parser = usage::parse_discount, value_name = "TENANT=PERCENT")]
        equity_discount: Vec<edupool_proto::v1::EquityDiscount>,
        /// Percent of a run's GPU charge credited to the member whose node ran it
        #[arg(long, value_name = "PERCENT")]
        lending_credit: Option<i64>,
    },
    /// Every price version, oldest first
    List,
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// Set or remove a tenant's budget (admins)
    #[command(after_help = "Examples:\n  \
        edupoolctl budget set uni-b --soft 800 --hard 1000\n  \
        edupoolctl budget set uni-b --remove")]
    Set {
        /// The tenant
        tenant: String,
        /// The budget period (UTC)
        #[arg(long, default_value = "month", value_parser = ["day", "week", "month"])]
        period: String,
        /// Over it: a warning in reports and an alert
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        soft: Option<i64>,
        /// Over it: only scavenger jobs are accepted until the period ends
        #[arg(long, value_parser = usage::parse_money, value_name = "AMOUNT")]
        hard: Option<i64>,
        /// Remove the tenant's budget
        #[arg(long, conflicts_with_all = ["soft", "hard"])]
        remove: bool,
    },
    /// Budgets and this period's spending [tenants: their own]
    List {
        /// Only this tenant
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// `parse_env` for a secret: its error never repeats the text.
fn parse_secret_env(text: &str) -> Result<(String, String), String> {
    parse_env(text).map_err(|_| "expected KEY=VALUE (the text is not shown)".to_string())
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
    if let Some(path) = &args.secret_env_file {
        file.secret_env.extend(jobfile::load_secret_env(path)?);
    }
    file.secret_env.extend(args.secret_env);
    let p = args.policy;
    file.nodes = p.nodes.or(file.nodes);
    file.priority = p.priority.unwrap_or(file.priority);
    file.gpu_fraction = p.gpu_fraction.or(file.gpu_fraction);
    file.gpu_model = p.gpu_model.or(file.gpu_model);
    file.gpu_class = p.gpu_class.or(file.gpu_class);
    file.min_gpu_memory_gib = p.min_gpu_memory_gib.or(file.min_gpu_memory_gib);
    file.site = p.site.or(file.site);
    file.preferred_site = p.preferred_site.or(file.preferred_site);
    file.data_level = p.data_level.or(file.data_level);
    if p.no_requeue_on_preempt {
        file.requeue_on_preempt = Some(false);
    }
    Ok(file.to_spec()?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    if matches!(global.output, Format::Csv) && !matches!(command, Command::Usage(_)) {
        anyhow::bail!(
            "--output csv is only for `usage report`, `usage settlement` and `usage export`"
        );
    }
    let usage_format = match global.output {
        Format::Table => UsageFormat::Table,
        Format::Json => UsageFormat::Json,
        Format::Csv => UsageFormat::Csv,
    };
    // A bad job file is reported before any connection is made.
    let spec = match &command {
        Command::Job(JobCommand::Submit(args)) => Some(build_spec(args.as_ref().clone())?),
        _ => None,
    };
    if let Command::Pki(pki) = &command {
        return run_pki(pki, global.output);
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
    // One request id for every try of this submit, so a retry after an
    // unknown outcome cannot make a second job.
    let request_id = match &command {
        Command::Job(JobCommand::Submit(args)) => {
            args.request_id.clone().unwrap_or_else(new_request_id)
        }
        _ => String::new(),
    };
    let repeatable = is_repeatable(&command);
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
        let result = dispatch(&mut ctl, &command, spec.clone(), usage_format, &request_id).await;
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

/// A fresh request id: 128 random bits in hex (from the process's
/// randomly seeded hasher keys, so no extra dependency is needed).
fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("ctl-{:016x}{:016x}", half(), half())
}

/// Whether running the command twice does no harm: reads, and a submit
/// (its request id makes a repeat return the first job).
fn is_repeatable(command: &Command) -> bool {
    match command {
        Command::Job(j) => !matches!(j, JobCommand::Cancel { .. }),
        Command::Node(n) => matches!(n, NodeCommand::List),
        Command::Tenant(t) => matches!(t, TenantCommand::List | TenantCommand::Show { .. }),
        Command::Cluster(c) => {
            matches!(c, ClusterCommand::Status | ClusterCommand::Snapshot { .. })
        }
        Command::Usage(_) => true,
        Command::Price(p) => matches!(p, PriceCommand::List),
        Command::Token(t) => matches!(t, TokenCommand::List { .. }),
        Command::Audit(_) => true,
        Command::Budget(b) => matches!(b, BudgetCommand::List { .. }),
        Command::Pki(_) => false,
    }
}

/// `edupoolctl pki ...`: makes the files and lists what it wrote.
fn run_pki(command: &PkiCommand, output: Format) -> anyhow::Result<()> {
    use edupoolctl::pki::{Ca, CertKind, Validity};
    let written = match command {
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
        Format::Json => println!("{}", serde_json::json!({ "certificate": cert, "key": key })),
        Format::Table | Format::Csv => println!("wrote {cert}\nwrote {key} (private: mode 0600)"),
    }
    Ok(())
}

fn issue(
    files: &PkiFiles,
    kind: &edupoolctl::pki::CertKind,
    days: u32,
) -> anyhow::Result<[PathBuf; 2]> {
    let ca = edupoolctl::pki::Ca::load(&files.dir)?;
    let issued = ca.issue(kind, edupoolctl::pki::Validity::days(days))?;
    let out = files.out.as_ref().unwrap_or(&files.dir);
    Ok(issued.write(out, &kind.file_stem(), files.force)?)
}

/// The gRPC status a command failed with, if it failed in a call.
fn rpc_status(error: &anyhow::Error) -> Option<&tonic::Status> {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<CommandError>())
        .find_map(CommandError::status)
}

async fn dispatch(
    ctl: &mut Ctl<io::Stdout>,
    command: &Command,
    spec: Option<JobSpec>,
    usage_format: UsageFormat,
    request_id: &str,
) -> anyhow::Result<()> {
    match command {
        Command::Pki(_) => anyhow::bail!("pki commands work on files and need no scheduler"),
        Command::Job(JobCommand::Submit(args)) => {
            let array = args.array.unwrap_or(0);
            ctl.submit_job(spec.expect("built before connecting"), array, request_id)
                .await?;
        }
        Command::Job(JobCommand::List {
            state,
            tenant,
            limit,
        }) => {
            ctl.list_jobs(JobFilter {
                states: state.clone(),
                tenant: tenant.clone(),
                limit: *limit,
            })
            .await?;
        }
        Command::Job(JobCommand::Get { id }) => {
            ctl.get_job(id).await?;
        }
        Command::Job(JobCommand::Cancel { id, reason }) => {
            ctl.cancel_job(id, reason.as_deref().unwrap_or_default())
                .await?;
        }
        Command::Job(JobCommand::Logs { id, stderr, follow }) => {
            let stream = if *stderr {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            ctl.job_logs(id, stream, *follow).await?;
        }
        Command::Job(JobCommand::Watch { id }) => {
            ctl.watch_job(id).await?;
        }
        Command::Node(NodeCommand::List) => {
            ctl.list_nodes().await?;
        }
        Command::Node(NodeCommand::Cordon { name }) => {
            ctl.node_action(name, NodeAction::Cordon).await?;
        }
        Command::Node(NodeCommand::Uncordon { name }) => {
            ctl.node_action(name, NodeAction::Uncordon).await?;
        }
        Command::Node(NodeCommand::Drain { name }) => {
            ctl.node_action(name, NodeAction::Drain).await?;
        }
        Command::Node(NodeCommand::ClearGpu { name, gpu_uuid }) => {
            ctl.clear_gpu(name, gpu_uuid).await?;
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            ctl.create_tenant(name).await?;
        }
        Command::Tenant(TenantCommand::List) => {
            ctl.list_tenants().await?;
        }
        Command::Cluster(ClusterCommand::Status) => {
            ctl.cluster_status().await?;
        }
        Command::Cluster(ClusterCommand::AddMember { id, address }) => {
            ctl.add_member(*id, address).await?;
        }
        Command::Cluster(ClusterCommand::RemoveMember { id }) => {
            ctl.remove_member(*id).await?;
        }
        Command::Cluster(ClusterCommand::TransferLeader { to }) => {
            ctl.transfer_leader(*to).await?;
        }
        Command::Cluster(ClusterCommand::Snapshot { out }) => {
            ctl.cluster_snapshot(out).await?;
        }
        Command::Job(JobCommand::Explain { id }) => {
            ctl.explain_job(id).await?;
        }
        Command::Node(NodeCommand::Label {
            name,
            owner,
            site,
            data_level,
            gpu_class,
        }) => {
            let labels = NodeLabels {
                owner: owner.clone().unwrap_or_default(),
                site: site.clone().unwrap_or_default(),
                data_level: *data_level,
                gpu_class: gpu_class.clone().unwrap_or_default(),
            };
            ctl.label_node(name, labels).await?;
        }
        Command::Tenant(TenantCommand::Show { name }) => {
            ctl.show_tenant(name).await?;
        }
        Command::Tenant(TenantCommand::SetQuota {
            name,
            gpu_class,
            guaranteed,
            borrow_limit,
        }) => {
            ctl.set_quota(name, gpu_class, *guaranteed, *borrow_limit)
                .await?;
        }
        Command::Tenant(TenantCommand::SetShare {
            name,
            weight,
            equity,
        }) => {
            ctl.set_share(name, weight.unwrap_or(0), equity.unwrap_or(0))
                .await?;
        }
        Command::Tenant(TenantCommand::SetCap {
            name,
            job_class,
            max_gpus,
        }) => {
            ctl.set_class_cap(name, (*job_class).into(), *max_gpus)
                .await?;
        }
        Command::Tenant(TenantCommand::Suspend {
            name,
            stop_running,
            reason,
        }) => {
            ctl.suspend_tenant(name, reason.clone(), *stop_running)
                .await?;
        }
        Command::Tenant(TenantCommand::Resume { name }) => {
            ctl.resume_tenant(name).await?;
        }
        Command::Token(TokenCommand::Create {
            role,
            tenant,
            name,
            expires,
        }) => {
            ctl.create_token(NewToken {
                role: role.clone(),
                tenant: tenant.clone(),
                name: name.clone(),
                expires_in: *expires,
            })
            .await?;
        }
        Command::Token(TokenCommand::List { tenant }) => {
            ctl.list_tokens(tenant.clone()).await?;
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            ctl.revoke_token(id).await?;
        }
        Command::Audit(AuditCommand::List {
            tenant,
            actor,
            action,
            since,
            until,
            limit,
        }) => {
            ctl.list_audit(AuditFilter {
                tenant: tenant.clone(),
                actor: actor.clone(),
                action: action.clone(),
                since_ms: *since,
                until_ms: *until,
                limit: *limit,
            })
            .await?;
        }
        Command::Audit(AuditCommand::Export {
            after,
            follow,
            poll,
        }) => {
            ctl.export_audit(*after, follow.then_some(*poll)).await?;
        }
        Command::Audit(AuditCommand::Refused {
            tenant,
            actor,
            action,
        }) => {
            ctl.list_refused_calls(RefusedFilter {
                tenant: tenant.clone(),
                actor: actor.clone(),
                action: action.clone(),
            })
            .await?;
        }
        Command::Usage(u) => usage_dispatch(ctl, u, usage_format).await?,
        Command::Price(PriceCommand::Set {
            effective_from,
            currency,
            gpu_hour,
            energy_per_kwh,
            free_gpu_hours,
            equity_discount,
            lending_credit,
        }) => {
            ctl.set_prices(SetPricesRequest {
                effective_from_ms: *effective_from,
                currency: currency.clone().unwrap_or_default(),
                gpu_hour: gpu_hour.clone(),
                energy_per_kwh_milli: *energy_per_kwh,
                free_milli_gpu_hours: *free_gpu_hours,
                equity_discounts: equity_discount.clone(),
                lending_credit_percent: *lending_credit,
            })
            .await?;
        }
        Command::Price(PriceCommand::List) => {
            ctl.list_prices().await?;
        }
        Command::Budget(BudgetCommand::Set {
            tenant,
            period,
            soft,
            hard,
            remove,
        }) => {
            if !remove && soft.is_none() && hard.is_none() {
                anyhow::bail!("give --soft, --hard or both (or --remove)");
            }
            ctl.set_budget(SetBudgetRequest {
                tenant: tenant.clone(),
                period: period.clone(),
                soft_milli: *soft,
                hard_milli: *hard,
                remove: *remove,
            })
            .await?;
        }
        Command::Budget(BudgetCommand::List { tenant }) => {
            ctl.list_budgets(tenant.as_deref()).await?;
        }
    }
    Ok(())
}

async fn usage_dispatch(
    ctl: &mut Ctl<io::Stdout>,
    command: &UsageCommand,
    format: UsageFormat,
) -> anyhow::Result<()> {
    match command {
        UsageCommand::Report { tenant, range, by } => {
            let by = match by {
                ReportBy::Day => "day",
                ReportBy::Job => "job",
                ReportBy::Model => "model",
                ReportBy::Class => "class",
            };
            ctl.usage_report(
                tenant.as_deref(),
                range.start_ms(),
                range.to_ms(),
                by,
                format,
            )
            .await?;
        }
        UsageCommand::Settlement { range } => {
            ctl.usage_settlement(range.start_ms(), range.to_ms(), format)
                .await?;
        }
        UsageCommand::Export { tenant, range } => {
            ctl.usage_export(tenant.as_deref(), range.start_ms(), range.to_ms(), format)
                .await?;
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
        build_spec(*submit)
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
    fn secret_env_comes_from_flags_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.env");
        std::fs::write(&path, "FROM_FILE=f\nBOTH=file\n").unwrap();
        let path = path.to_str().unwrap();
        let spec = submit_spec(&[
            "job",
            "submit",
            "--gpus",
            "1",
            "--secret-env-file",
            path,
            "--secret-env",
            "BOTH=flag",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(spec.secret_env["FROM_FILE"], "f");
        assert_eq!(spec.secret_env["BOTH"], "flag", "a flag overrides the file");
        assert!(spec.env.is_empty());
        let err = parse(&[
            "job",
            "submit",
            "--gpus",
            "1",
            "--secret-env",
            "NOVALUE",
            "--",
            "x",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn deadlines_and_request_ids_parse_and_only_safe_commands_repeat() {
        let cli = parse(&[
            "--timeout",
            "5s",
            "--attempt-timeout",
            "500ms",
            "job",
            "submit",
            "--request-id",
            "run-7",
            "--gpus",
            "1",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
        assert_eq!(cli.global.attempt_timeout, Duration::from_millis(500));
        assert!(is_repeatable(&cli.command));
        let Command::Job(JobCommand::Submit(args)) = &cli.command else {
            panic!("not a submit")
        };
        assert_eq!(args.request_id.as_deref(), Some("run-7"));
        let defaults = parse(&["job", "list"]).unwrap();
        assert_eq!(defaults.global.timeout, Duration::from_secs(30));
        assert!(is_repeatable(&defaults.command));
        for write in [
            &["job", "cancel", "j-1"][..],
            &["node", "drain", "n1"],
            &["tenant", "create", "x"],
        ] {
            assert!(!is_repeatable(&parse(write).unwrap().command), "{write:?}");
        }
        let fresh = new_request_id();
        assert_ne!(fresh, new_request_id());
        assert!(fresh.len() <= 128 && fresh.starts_with("ctl-"), "{fresh}");
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

    #[test]
    fn usage_price_and_budget_commands_parse() {
        let cli = parse(&[
            "usage",
            "report",
            "--tenant",
            "uni-b",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01T00:00:00Z",
            "--by",
            "model",
            "-o",
            "csv",
        ])
        .unwrap();
        assert!(matches!(cli.global.output, Format::Csv));
        let Command::Usage(UsageCommand::Report { tenant, range, by }) = cli.command else {
            panic!("not a usage report")
        };
        assert_eq!(tenant.as_deref(), Some("uni-b"));
        assert!(matches!(by, ReportBy::Model));
        assert!(range.start_ms() < range.to_ms());
        // Without --from, a report covers this month so far.
        let cli = parse(&["usage", "report"]).unwrap();
        let Command::Usage(UsageCommand::Report { range, .. }) = cli.command else {
            panic!("not a usage report")
        };
        assert_eq!(range.from, None);
        assert!(range.start_ms() <= range.to_ms());
        let cli = parse(&[
            "price",
            "set",
            "--gpu-hour",
            "A100-80GB:batch=6",
            "--gpu-hour",
            "A100-80GB=8",
            "--equity-discount",
            "uni-b=20",
        ])
        .unwrap();
        let Command::Price(PriceCommand::Set {
            gpu_hour,
            equity_discount,
            ..
        }) = cli.command
        else {
            panic!("not price set")
        };
        assert_eq!(gpu_hour.len(), 2);
        assert_eq!(equity_discount[0].percent, 20);
        assert!(parse(&["price", "set", "--energy-per-kwh", "-1"]).is_err());
        assert!(parse(&["budget", "set", "uni-b", "--hard", "5", "--remove"]).is_err());
    }
}
