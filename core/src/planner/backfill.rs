//! The reservation for the top blocked job.
//!
//! The highest job in the queue order that does not fit gets the nodes
//! where it could start earliest, judged by when the jobs there reach their
//! walltime. Until then, smaller jobs may still run on those nodes, but
//! only if their own walltime ends before the reservation starts, so they
//! never delay it.

use std::collections::{BTreeMap, HashMap};

use super::explain::Hold;
use super::queue::Terms;
use super::Round;
use crate::state::{Host, Job, JobId, JobState, Millis, WHOLE_GPU};

/// The reservation a round made: for which job, on which nodes, from when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Reservation {
    pub job: JobId,
    pub nodes: Vec<String>,
    pub until: Millis,
}

/// The hold of a job that would fit on the nodes reserved for another
/// (its walltime runs past the reservation's start), naming that job.
pub(super) fn behind_reservation(round: &Round, job: &Job, terms: &Terms) -> Option<Hold> {
    let r = round.reservation.as_ref().filter(|r| r.job != job.id)?;
    let classes: Vec<&str> = terms
        .guaranteed
        .iter()
        .chain(&terms.borrowable)
        .copied()
        .collect();
    let buckets: Vec<_> = round
        .index
        .buckets_for(&job.spec.constraints, &classes)
        .collect();
    // Ending by the reservation's start, it would be let in.
    round.index.place(&job.spec, &buckets, r.until)?;
    Some(Hold::BehindReservation {
        holder: r.job,
        nodes: r.nodes.clone(),
        until: r.until,
    })
}

/// Reserves nodes for `job` over the allowed GPU classes; the hold that
/// says so, or `None` when no set of nodes could ever take it.
pub(super) fn reserve(
    round: &mut Round,
    job: &Job,
    classes: &[&str],
    within_guarantee: bool,
) -> Option<Hold> {
    let spec = &job.spec;
    let buckets: Vec<usize> = round
        .index
        .buckets_for(&spec.constraints, classes)
        .map(|(b, _)| b)
        .collect();
    let ends = expected_ends(round);
    // The earliest start on each node, grouped by site for gangs.
    let mut by_site: BTreeMap<(&str, &str), Vec<(Millis, usize)>> = BTreeMap::new();
    for &b in &buckets {
        let key = round.index.key(b);
        for &i in round.index.members(b) {
            if round.index.reserved_until(i).is_some() {
                continue;
            }
            if let Some(at) = earliest_start(round, job, &[b], i, &ends) {
                by_site
                    .entry((key.site.as_str(), key.class.as_str()))
                    .or_default()
                    .push((at, i));
            }
        }
    }
    let want = spec.nodes.max(1) as usize;
    let mut best: Option<(Millis, Vec<usize>)> = None;
    for (_, mut starts) in by_site {
        if starts.len() < want {
            continue;
        }
        starts.sort_unstable();
        let at = starts[want - 1].0;
        if best.as_ref().is_none_or(|(b, _)| at < *b) {
            best = Some((at, starts[..want].iter().map(|&(_, i)| i).collect()));
        }
    }
    let (until, chosen) = best?;
    let names: Vec<String> = chosen
        .iter()
        .map(|&i| round.index.node(i).name.clone())
        .collect();
    for i in chosen {
        round.index.reserve(i, until);
    }
    round.reservation = Some(Reservation {
        job: job.id,
        nodes: names.clone(),
        until,
    });
    let shortage = (round.watch == Some(job.id)).then(|| (spec.host(), round.index.shortage(spec)));
    Some(Hold::Reserved {
        until,
        nodes: names,
        within_guarantee,
        shortage,
    })
}

/// When each placed job's GPUs are expected back, by node name.
fn expected_ends<'a>(round: &Round<'a>) -> HashMap<&'a str, Vec<(Millis, &'a Job)>> {
    let mut ends: HashMap<&'a str, Vec<(Millis, &'a Job)>> = HashMap::new();
    for job in round.state.placed_jobs() {
        let at = match job.state {
            JobState::Preempting | JobState::Cancelling => {
                round.now + job.spec.grace_period_secs as Millis * 1000
            }
            _ => {
                let from = job.started_at.or(job.placed_at).unwrap_or(round.now);
                from + job.spec.walltime_secs as Millis * 1000
            }
        };
        for t in job.tasks.iter().filter(|t| !t.finished) {
            ends.entry(t.node.as_str())
                .or_default()
                .push((at.max(round.now), job));
        }
    }
    ends
}

/// The earliest time one task of `job` fits on node `i`, as the jobs there
/// end at their walltime.
fn earliest_start(
    round: &Round,
    job: &Job,
    buckets: &[usize],
    i: usize,
    ends: &HashMap<&str, Vec<(Millis, &Job)>>,
) -> Option<Millis> {
    let node = round.index.node(i);
    let spec = &job.spec;
    if !node.runs(spec) {
        return None;
    }
    let node_free = round.index.free_of(i);
    let milli = spec.milli_per_gpu();
    let eligible: Vec<bool> = (0..node_free.len())
        .map(|pos| {
            buckets
                .iter()
                .any(|&b| round.index.gpu_in(&spec.constraints, i, pos, b))
        })
        .collect();
    if eligible.iter().filter(|e| **e).count() < spec.gpus as usize {
        return None;
    }
    let mut free = node_free.to_vec();
    // The task's CPU and memory must be free too.
    let mut host = round.index.host_of(i);
    let fits = |free: &[u32], host: Host| {
        host.holds(spec.host())
            && free
                .iter()
                .zip(&eligible)
                .filter(|(f, e)| **e && (**f).min(WHOLE_GPU) >= milli)
                .count()
                >= spec.gpus as usize
    };
    if fits(&free, host) {
        return Some(round.now);
    }
    let mut releases = ends.get(node.name.as_str()).cloned().unwrap_or_default();
    releases.sort_by_key(|(at, j)| (*at, j.id));
    for (at, j) in releases {
        for t in j.tasks.iter().filter(|t| t.node == node.name) {
            for (pos, g) in node.gpus.iter().enumerate() {
                if t.gpus.contains(&g.info.uuid) {
                    free[pos] += j.spec.milli_per_gpu();
                }
            }
            host = host.plus(j.spec.host());
        }
        if fits(&free, host) {
            return Some(at);
        }
    }
    None
}
