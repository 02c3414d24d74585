//! Why a job is where it is, in words a person can act on.
//!
//! `explain` runs the same planning round the leader runs and records what
//! happened to one job, so the answer is the rule that really holds it
//! back, not a guess beside the planner.

use std::fmt;

use super::placement::Shortage;
use super::{Policy, Round};
use crate::state::{show_cpu, show_memory, Host, Indexed, JobClass, JobId, JobState, Millis};

/// What held a job back in a round (or that it would be placed now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// It would be placed in this round.
    PlacedNow,
    /// Its tenant is suspended.
    Suspended,
    /// No schedulable node has a GPU of the class or model it asks for.
    NoMatchingGpu,
    /// No schedulable node has its image (`None`: runs jobs without one).
    NoSoftware { image: Option<String> },
    /// Above its guarantee and at its borrow limit in every class.
    BorrowLimit { gpu_class: String, limit: u32 },
    /// Its job class has used the tenant's cap for it.
    ClassCap { job_class: JobClass, cap: u32 },
    /// GPUs are being freed for it by preempted jobs in their grace period.
    WaitingForPreemption { node: String },
    /// This round preempts these jobs for it.
    Reclaiming { node: String, victims: Vec<JobId> },
    /// It is the top blocked job and holds these nodes from `until`.
    Reserved {
        until: Millis,
        nodes: Vec<String>,
        within_guarantee: bool,
        /// For the job explained: what is short now, as for `NoCapacity`.
        shortage: Option<(Host, Shortage)>,
    },
    /// It would fit on nodes reserved for `holder`, but its walltime runs
    /// past the reservation's start.
    BehindReservation {
        holder: JobId,
        nodes: Vec<String>,
        until: Millis,
    },
    /// No room for it now. For the job explained: what one task asks for
    /// besides GPUs, and how many nodes lack each dimension.
    NoCapacity {
        within_guarantee: bool,
        gang: bool,
        shortage: Option<(Host, Shortage)>,
    },
    /// The round's budget ran out before its turn.
    NotReached,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::PlacedNow => write!(f, "it fits now and will be placed in the next planning round"),
            Hold::Suspended => write!(f, "its tenant is suspended, so none of its jobs start"),
            Hold::NoMatchingGpu => write!(
                f,
                "no schedulable node has GPUs of the model or class it asks for (they may be down or cordoned)"
            ),
            Hold::NoSoftware { image: Some(image) } => write!(
                f,
                "image {image} is on no schedulable node; it runs once an agent reports it (import it with `edupool-agent image import`; `edupoolctl image list` shows which images nodes have)"
            ),
            Hold::NoSoftware { image: None } => write!(
                f,
                "no schedulable node runs jobs without an image (only agents started with --allow-host-jobs do); submit it with --image NAME (`edupoolctl image list` shows which images nodes have)"
            ),
            Hold::BorrowLimit { gpu_class, limit } => write!(
                f,
                "borrow limit: its tenant is above its guarantee and already borrows the most it may ({limit} {gpu_class} GPUs above the guarantee)"
            ),
            Hold::ClassCap { job_class, cap } => write!(
                f,
                "class cap: {} jobs of its tenant may use at most {cap} GPUs of the guarantee, and no idle GPUs are free to borrow",
                job_class.name()
            ),
            Hold::WaitingForPreemption { node } => write!(
                f,
                "guarantee: its tenant is below its guarantee; borrowed GPUs on {node} are being reclaimed and the preempted jobs are in their grace period"
            ),
            Hold::Reclaiming { node, victims } => {
                let v: Vec<String> = victims.iter().map(JobId::to_string).collect();
                write!(
                    f,
                    "guarantee: its tenant is below its guarantee; preempting {} on {node} to free borrowed GPUs for it",
                    v.join(", ")
                )
            }
            Hold::Reserved {
                until,
                nodes,
                within_guarantee,
                shortage,
            } => {
                write!(
                    f,
                    "reservation: it is the first blocked job in the queue; {} {} reserved for it from {} (when running jobs there reach their walltime); smaller jobs may only use them if they end before then",
                    if nodes.len() == 1 { "node" } else { "nodes" },
                    nodes.join(", "),
                    rfc3339(*until),
                )?;
                if let Some((host, s)) = shortage {
                    write!(f, "; short now: {}", short_dimensions(*host, s))?;
                }
                write!(f, "{}", guarantee_note(*within_guarantee))
            }
            Hold::BehindReservation {
                holder,
                nodes,
                until,
            } => write!(
                f,
                "reservation: GPUs it could use are free on {}, but they are reserved for {holder} (the first blocked job in the queue) from {}; it may run there only if its walltime ends before then, so it waits (or submit it with a shorter walltime)",
                nodes.join(", "),
                rfc3339(*until)
            ),
            Hold::NoCapacity {
                within_guarantee,
                gang,
                shortage,
            } => {
                let what = if *gang {
                    "not enough nodes in one site have the GPUs, CPU and memory free for all its tasks at once"
                } else {
                    "no node has enough free GPUs, CPU and memory that meet its constraints"
                };
                write!(f, "capacity: {what}")?;
                if let Some((host, s)) = shortage {
                    write!(f, " ({})", short_dimensions(*host, s))?;
                }
                write!(f, "{}", guarantee_note(*within_guarantee))
            }
            Hold::NotReached => write!(
                f,
                "queue: jobs ahead of it (by guarantee, fair share, class, priority and submit time) used this round's planning budget"
            ),
        }
    }
}

/// Which dimensions are short and on how many of the nodes that could run
/// the job: `CPU: 2 of 3 nodes lack 6 CPU cores free; memory: ...`.
fn short_dimensions(host: Host, s: &Shortage) -> String {
    if s.nodes == 0 {
        return "no schedulable node meets its constraints".into();
    }
    let of = |n: usize| {
        let nodes = if s.nodes == 1 { "node" } else { "nodes" };
        let verb = if n == 1 { "lacks" } else { "lack" };
        format!("{n} of {} {nodes} {verb}", s.nodes)
    };
    let mut parts = vec![];
    if s.gpus > 0 {
        parts.push(format!("GPUs: {} the free GPUs it asks for", of(s.gpus)));
    }
    if s.cpu > 0 {
        parts.push(format!(
            "CPU: {} {} free per task",
            of(s.cpu),
            show_cpu(host.cpu_millicores)
        ));
    }
    if s.memory > 0 {
        parts.push(format!(
            "memory: {} {} free per task",
            of(s.memory),
            show_memory(host.memory_bytes)
        ));
    }
    if parts.is_empty() {
        return format!(
            "each of the {} nodes that could run it has room for one task, but they are held for others or too few in one site",
            s.nodes
        );
    }
    parts.join("; ")
}

fn rfc3339(at: Millis) -> impl fmt::Display {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64),
    )
}

fn guarantee_note(within_guarantee: bool) -> &'static str {
    if within_guarantee {
        "; it is within its tenant's guarantee, but no borrowed GPUs can be reclaimed for it (the GPUs in use are inference jobs, within their owners' guarantees, or it is a multi-node gang)"
    } else {
        "; its tenant is at or above its guarantee, so it waits for idle GPUs"
    }
}

/// Why job `id` is in its state: for a pending job, the rule that holds it
/// back in a round planned now.
pub fn explain(state: &Indexed, now: Millis, policy: &Policy, id: JobId) -> Option<String> {
    let job = state.job(id)?;
    let nodes: Vec<&str> = job.nodes().collect();
    Some(match job.state {
        JobState::Pending => {
            let (_, hold) = Round::new(state, now, policy, Some(id)).run();
            let hold = hold.unwrap_or(Hold::NotReached);
            match (&job.spec.image, &hold) {
                (Some(image), Hold::NoCapacity { .. }) => {
                    let on = state
                        .nodes()
                        .filter(|n| n.schedulable() && n.has_image(image))
                        .count();
                    let nodes = if on == 1 { "node" } else { "nodes" };
                    format!("{hold}; image {image} is on {on} {nodes}, all busy")
                }
                _ => hold.to_string(),
            }
        }
        JobState::Assigned | JobState::Running => format!(
            "{} on {} ({} capacity)",
            job.state.name(),
            nodes.join(", "),
            job.capacity.name()
        ),
        _ => format!("{}: {}", job.state.name(), job.reason),
    })
}
