//! `edupoolctl job ...`: submit, list, inspect and cancel jobs; read their
//! logs.

use std::{io, path::PathBuf, time::Duration};

use clap::{
    builder::{PossibleValuesParser, TypedValueParser as _},
    Args, Subcommand,
};
use edupool_proto::v1::{JobSpec, JobState, LogStream};
use edupoolctl::{
    commands::{Ctl, JobFilter},
    jobfile::{self, Class, JobFile, NodeLostPolicy},
    parse_job_state, JOB_STATE_NAMES,
};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
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
pub struct SubmitArgs {
    /// A job file (.yaml, .yml or .toml); flags given with it override its fields
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,

    /// Whole GPUs on one node; 0 for a CPU-only job (with --cpu) [required without -f]
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
    pub request_id: Option<String>,

    /// The program and its arguments, after `--` [required without -f]
    #[arg(last = true, value_name = "COMMAND", required_unless_present = "file")]
    command: Vec<String>,

    #[command(flatten)]
    policy: PolicyArgs,
}

/// The job's policy fields (docs/policy.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Placement")]
pub struct PolicyArgs {
    /// Run as a gang of N tasks of --gpus GPUs each, one per node, all in one site
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,

    /// Order among your own jobs of one class; higher first
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i32>,

    /// Thousandths of one GPU (1-999), for small work; needs --gpus 1
    #[arg(long, value_name = "MILLI")]
    gpu_fraction: Option<u32>,

    /// Only GPUs of these exact models, any one of them, e.g. A100-80GB or
    /// V100-16GB,V100-32GB
    #[arg(long, value_name = "MODEL,...", value_delimiter = ',')]
    gpu_model: Vec<String>,

    /// Only GPUs of these classes (model families), e.g. A100 or V100,A100
    #[arg(long, value_name = "CLASS,...", value_delimiter = ',')]
    gpu_class: Vec<String>,

    /// CPU per task: cores (4, 0.5) or millicores (500m) [default: the
    /// pool's per GPU; required with --gpus 0]
    #[arg(long, value_name = "CPU")]
    cpu: Option<String>,

    /// Host memory per task, e.g. 16GiB or 512MiB [default: the pool's per GPU]
    #[arg(long, value_name = "BYTES")]
    memory: Option<String>,

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

    /// Run in this image from the nodes' image stores (`edupoolctl image
    /// list`); without one the job runs as a host process, only on nodes
    /// whose agent allows that
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
}

/// A submission made ready before any connection: a bad job file is
/// reported first, and one request id serves every try of the submit, so
/// a retry after an unknown outcome cannot make a second job.
#[derive(Debug, Clone)]
pub struct Submission {
    pub spec: JobSpec,
    pub array: u32,
    pub request_id: String,
}

impl JobCommand {
    /// The submission to make, for `job submit`; `None` for the others.
    pub fn submission(&self) -> anyhow::Result<Option<Submission>> {
        let JobCommand::Submit(args) = self else {
            return Ok(None);
        };
        Ok(Some(Submission {
            spec: build_spec(args.as_ref().clone())?,
            array: args.array.unwrap_or(0),
            request_id: args.request_id.clone().unwrap_or_else(new_request_id),
        }))
    }

    /// Whether running it twice does no harm: all but `cancel` (a
    /// submit's request id makes a repeat return the first job).
    pub fn is_repeatable(&self) -> bool {
        !matches!(self, JobCommand::Cancel { .. })
    }

    /// `submission` is what [`JobCommand::submission`] made of it.
    pub async fn run(
        &self,
        ctl: &mut Ctl<io::Stdout>,
        submission: Option<&Submission>,
    ) -> anyhow::Result<()> {
        match self {
            JobCommand::Submit(_) => {
                let Some(s) = submission else {
                    anyhow::bail!("a submit is made ready before connecting");
                };
                ctl.submit_job(s.spec.clone(), s.array, &s.request_id)
                    .await?;
            }
            JobCommand::List {
                state,
                tenant,
                limit,
            } => {
                ctl.list_jobs(JobFilter {
                    states: state.clone(),
                    tenant: tenant.clone(),
                    limit: *limit,
                })
                .await?;
            }
            JobCommand::Get { id } => {
                ctl.get_job(id).await?;
            }
            JobCommand::Cancel { id, reason } => {
                ctl.cancel_job(id, reason.as_deref().unwrap_or_default())
                    .await?;
            }
            JobCommand::Logs { id, stderr, follow } => {
                let stream = if *stderr {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                };
                ctl.job_logs(id, stream, *follow).await?;
            }
            JobCommand::Watch { id } => {
                ctl.watch_job(id).await?;
            }
            JobCommand::Explain { id } => {
                ctl.explain_job(id).await?;
            }
        }
        Ok(())
    }
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
pub fn build_spec(args: SubmitArgs) -> anyhow::Result<JobSpec> {
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
    if !p.gpu_model.is_empty() {
        file.gpu_model = None;
        file.gpu_models = p.gpu_model;
    }
    if !p.gpu_class.is_empty() {
        file.gpu_class = None;
        file.gpu_classes = p.gpu_class;
    }
    file.cpu = p.cpu.or(file.cpu);
    file.memory = p.memory.or(file.memory);
    file.min_gpu_memory_gib = p.min_gpu_memory_gib.or(file.min_gpu_memory_gib);
    file.site = p.site.or(file.site);
    file.preferred_site = p.preferred_site.or(file.preferred_site);
    file.data_level = p.data_level.or(file.data_level);
    if p.no_requeue_on_preempt {
        file.requeue_on_preempt = Some(false);
    }
    file.image = p.image.or(file.image);
    Ok(file.to_spec()?)
}

/// A fresh request id: 128 random bits in hex (from the process's
/// randomly seeded hasher keys, so no extra dependency is needed).
pub fn new_request_id() -> String {
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
