//! One replay: a pool, a job list and a queue order, driven through the
//! scheduler's own core with a virtual clock.
//!
//! The pool is built with the commands the real scheduler logs (tenants,
//! `NodeConnected`, `LabelNode`), jobs are submitted with `SubmitJob` when
//! they arrive, and every placement and preemption is a decision of
//! `planner::plan` applied with `Indexed::apply` (`State::apply` with
//! the planner's indexes kept beside the state, as a replica keeps them).
//! Simulated agents answer as real ones do: a `StartJob` effect is
//! reported started at once, the job exits (`JobExited`, exit 0) when its
//! true run time is up, and a `StopJob` ends the task at once. The planner
//! only ever sees the state, never a job's true duration.
//!
//! Rounds are planned only when something happened (arrivals and exits),
//! with everything at one instant applied first; a round that preempted
//! (or used its whole decision budget) is followed by another at the same
//! instant, as the scheduler's control loop replans on every change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use edupool_core::planner::{self, Decision, Policy, QueueOrder};
use edupool_core::state::{
    Command, Constraints, Effect, GpuInfo, Indexed, JobClass, JobId, JobSpec, JobUsage, Millis,
    NodeLabels, OnNodeLost, Outcome, WHOLE_GPU,
};

/// GPUs of every node in the replay.
pub const GPUS_PER_NODE: u32 = 8;

/// Rounds planned at one instant at most (preemption, then placement,
/// then whatever the budget left over).
const ROUNDS_PER_INSTANT: usize = 8;

/// A job of the trace, as submitted.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceJob {
    /// Index into the members.
    pub tenant: usize,
    pub submit: Millis,
    /// True run time: known to the simulated agent, never to the planner.
    pub duration: Millis,
    pub gpus: u32,
}

impl TraceJob {
    /// (tasks, GPUs per task): up to one node's GPUs is one task; above
    /// that a gang of whole nodes.
    pub fn shape(&self) -> (u32, u32) {
        if self.gpus <= GPUS_PER_NODE {
            (1, self.gpus)
        } else {
            (self.gpus.div_ceil(GPUS_PER_NODE), GPUS_PER_NODE)
        }
    }

    /// GPUs the job holds while placed.
    pub fn held(&self) -> u32 {
        let (tasks, per) = self.shape();
        tasks * per
    }
}

/// A member of the alliance and the nodes it contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub nodes: u32,
}

/// Settings of the simulated jobs and agents.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// A preempted job keeps the work done up to its last checkpoint.
    pub checkpoint_ms: Millis,
    /// Paid at the start of every run after a preemption.
    pub restart_delay_ms: Millis,
    /// The walltime every job is submitted with (the trace has none).
    pub walltime_secs: u64,
    /// Width of a timeline bucket.
    pub bucket_ms: Millis,
}

/// How the pool is organised for a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Nodes are labelled with their contributor, so its GPUs are its
    /// guarantee (and others' jobs on them can be preempted to return
    /// them).
    pub owners: bool,
    pub order: QueueOrder,
    /// Where the timeline starts (at or before the first submit), so the
    /// timelines of several replays line up.
    pub origin: Millis,
}

/// What happened to one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOutcome {
    pub submit: Millis,
    pub first_start: Option<Millis>,
    pub finish: Option<Millis>,
    /// Time spent pending, over all its runs.
    pub queued_ms: Millis,
    pub preemptions: u32,
    /// GPU time lost to preemption: work since the last checkpoint, and
    /// restart delays paid.
    pub lost_gpu_ms: i64,
}

impl JobOutcome {
    pub fn jct_ms(&self) -> Option<Millis> {
        self.finish.map(|f| f - self.submit)
    }
}

/// A replay's record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// By trace index.
    pub jobs: Vec<JobOutcome>,
    /// GPU-milliseconds held, per timeline bucket from the first submit.
    pub busy: Vec<f64>,
    /// Reclaim latencies: for each placement within a guarantee that
    /// needed others preempted, the time from its tenant's guaranteed
    /// demand (see `Replay::watch_guarantees`) to its placement.
    pub reclaim_ms: Vec<Millis>,
    /// The same placements' whole wait in the queue (from submission or
    /// requeue), which includes waiting behind their own tenant's work.
    pub claimant_wait_ms: Vec<Millis>,
    pub rounds: u64,
    /// Decisions `State::apply` refused (stale ones; expected to be none).
    pub rejected: u64,
    /// Jobs the state refused at submission (none when the pool can hold
    /// every job).
    pub refused: u64,
}

/// A job's life in the simulated agent.
#[derive(Clone, Debug, Default)]
struct Sim {
    id: Option<JobId>,
    /// Work kept by checkpoints over earlier runs.
    saved_ms: Millis,
    /// Runs started so far (an exit of an older run is stale).
    runs: u32,
    run_start: Millis,
    /// Restart delay of the current run.
    delay_ms: Millis,
    placed: bool,
    queued_since: Millis,
    out: JobOutcome,
}

struct Replay<'a> {
    state: Indexed,
    policy: Policy,
    params: &'a Params,
    members: &'a [Member],
    jobs: &'a [TraceJob],
    sims: Vec<Sim>,
    by_id: HashMap<JobId, usize>,
    /// Arrivals in (submit, index) order and the next one.
    arrivals: Vec<usize>,
    next_arrival: usize,
    /// (time, job index, run) of exits.
    exits: BinaryHeap<Reverse<(Millis, usize, u32)>>,
    start: Millis,
    last: Millis,
    busy_now: u64,
    /// Per member: its pending jobs by GPUs held, counted.
    pending: Vec<BTreeMap<u32, usize>>,
    /// Per member: since when it has been below its guarantee with a
    /// pending job that fits in what is left of it.
    unmet_since: Vec<Option<Millis>>,
    run: Run,
}

/// Replays `jobs` on the members' nodes; `tick` is called once per job
/// that finishes (or is refused).
pub fn replay(
    members: &[Member],
    jobs: &[TraceJob],
    setup: Setup,
    params: &Params,
    tick: &dyn Fn(),
) -> Run {
    let mut arrivals: Vec<usize> = (0..jobs.len()).collect();
    arrivals.sort_by_key(|&i| (jobs[i].submit, i));
    let start = arrivals
        .first()
        .map_or(setup.origin, |&i| jobs[i].submit.min(setup.origin));
    let mut r = Replay {
        state: Indexed::default(),
        policy: Policy {
            order: setup.order,
            ..Policy::default()
        },
        params,
        members,
        jobs,
        sims: jobs
            .iter()
            .map(|j| Sim {
                queued_since: j.submit,
                out: JobOutcome {
                    submit: j.submit,
                    ..JobOutcome::default()
                },
                ..Sim::default()
            })
            .collect(),
        by_id: HashMap::new(),
        arrivals,
        next_arrival: 0,
        exits: BinaryHeap::new(),
        start,
        last: start,
        busy_now: 0,
        pending: vec![BTreeMap::new(); members.len()],
        unmet_since: vec![None; members.len()],
        run: Run::default(),
    };
    r.build_pool(setup.owners, start);
    while let Some(now) = r.next_instant() {
        r.advance(now);
        r.exit_due(now, tick);
        r.arrive_due(now, tick);
        r.plan_at(now);
        r.watch_guarantees(now);
    }
    r.run.jobs = r.sims.into_iter().map(|s| s.out).collect();
    r.run
}

impl Replay<'_> {
    fn apply(&mut self, cmd: Command, at: Millis) -> Option<(Outcome, Vec<Effect>)> {
        self.state.apply(cmd, at).ok()
    }

    fn build_pool(&mut self, owners: bool, at: Millis) {
        // The job mix counts from here, as a live pool's leader starts it.
        let _ = self.apply(Command::StartMixTally, at);
        for (i, m) in self.members.iter().enumerate() {
            let cmd = Command::CreateTenant {
                name: m.name.clone(),
                token_hash: format!("simulated-token-{i}"),
            };
            self.apply(cmd, at).expect("tenant names are distinct");
            for n in 0..m.nodes {
                let node = format!("{}-{n:03}", m.name);
                let gpus = (0..GPUS_PER_NODE)
                    .map(|g| {
                        GpuInfo::plain(format!("GPU-{node}-{g}"), g, "P100-16GB".into(), 16 << 30)
                    })
                    .collect();
                let connect = Command::NodeConnected {
                    node: node.clone(),
                    gpus,
                    agent_version: "simulated".into(),
                    images: vec![],
                    allows_host_jobs: true,
                    // The Philly trace has GPUs only: no host requests,
                    // so no host capacity is needed.
                    cpu_millicores: 0,
                    memory_bytes: 0,
                };
                self.apply(connect, at).expect("a new node connects");
                let labels = NodeLabels {
                    owner: owners.then(|| m.name.clone()),
                    ..NodeLabels::default()
                };
                self.apply(Command::LabelNode { node, labels }, at)
                    .expect("the node and its owner exist");
            }
        }
    }

    fn next_instant(&self) -> Option<Millis> {
        let arrival = self
            .arrivals
            .get(self.next_arrival)
            .map(|&i| self.jobs[i].submit);
        let exit = self.exits.peek().map(|Reverse((t, _, _))| *t);
        match (arrival, exit) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    /// Adds the GPUs held since the last instant to the timeline.
    fn advance(&mut self, now: Millis) {
        let bucket = self.params.bucket_ms.max(1);
        let mut t = self.last;
        while t < now {
            let b = ((t - self.start) / bucket) as usize;
            let end = (self.start + (b as Millis + 1) * bucket).min(now);
            if self.run.busy.len() <= b {
                self.run.busy.resize(b + 1, 0.0);
            }
            self.run.busy[b] += self.busy_now as f64 * (end - t) as f64;
            t = end;
        }
        self.last = now;
    }

    fn exit_due(&mut self, now: Millis, tick: &dyn Fn()) {
        while let Some(&Reverse((t, i, run))) = self.exits.peek() {
            if t > now {
                break;
            }
            self.exits.pop();
            let sim = &self.sims[i];
            if !sim.placed || sim.runs != run {
                continue; // preempted before it finished
            }
            let id = sim.id.expect("a placed job was submitted");
            let ran = now - sim.run_start;
            let (_, per) = self.jobs[i].shape();
            let nodes: Vec<String> = self
                .state
                .job(id)
                .map(|j| j.nodes().map(String::from).collect())
                .unwrap_or_default();
            for node in nodes {
                let cmd = Command::JobExited {
                    node,
                    job: id,
                    exit_code: Some(0),
                    reason: String::new(),
                    finished_at: now,
                    usage: JobUsage {
                        gpu_ms: u64::from(per) * ran.max(0) as u64,
                        energy_mj: 0,
                    },
                };
                if self.apply(cmd, now).is_none() {
                    self.run.rejected += 1;
                }
            }
            let held = self.jobs[i].held();
            let sim = &mut self.sims[i];
            sim.placed = false;
            sim.out.finish = Some(now);
            sim.out.lost_gpu_ms += i64::from(held) * ran.min(sim.delay_ms);
            self.busy_now -= u64::from(held);
            tick();
        }
    }

    fn arrive_due(&mut self, now: Millis, tick: &dyn Fn()) {
        while let Some(&i) = self.arrivals.get(self.next_arrival) {
            if self.jobs[i].submit > now {
                break;
            }
            self.next_arrival += 1;
            let job = &self.jobs[i];
            let (tasks, per) = job.shape();
            let spec = JobSpec {
                name: format!("trace-{i}"),
                command: vec!["trace-job".into()],
                env: Default::default(),
                gpus: per,
                nodes: tasks,
                class: JobClass::Training,
                walltime_secs: self.params.walltime_secs,
                grace_period_secs: 30,
                on_node_lost: OnNodeLost::Requeue,
                max_retries: 0,
                priority: 0,
                gpu_fraction: 0,
                constraints: Constraints::default(),
                requeue_on_preempt: true,
                secret_env: Default::default(),
                image: None,
                cpu_millicores: 0,
                memory_bytes: 0,
            };
            let cmd = Command::SubmitJob {
                tenant: self.members[job.tenant].name.clone(),
                spec,
            };
            match self.apply(cmd, now) {
                Some((Outcome::Job(id), _)) => {
                    self.sims[i].id = Some(id);
                    self.by_id.insert(id, i);
                    self.queued(i, true);
                }
                _ => {
                    self.run.refused += 1;
                    tick();
                }
            }
        }
    }

    fn plan_at(&mut self, now: Millis) {
        for _ in 0..ROUNDS_PER_INSTANT {
            // The planner decides only for pending jobs: with none, a
            // round is known to be empty.
            if self.state.pending_jobs().next().is_none() {
                return;
            }
            let decisions = planner::plan(&self.state, now, &self.policy);
            self.run.rounds += 1;
            let again = decisions.len() >= self.policy.max_decisions
                || decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Preempt { .. }));
            if decisions.is_empty() {
                return;
            }
            for d in decisions {
                self.decide(d, now);
            }
            if !again {
                return;
            }
        }
    }

    /// Applies one planner decision and plays the agents' part.
    fn decide(&mut self, d: Decision, now: Millis) {
        let id = d.job();
        let preempt = matches!(d, Decision::Preempt { .. });
        let Some((_, effects)) = self.apply(d.into_command(), now) else {
            self.run.rejected += 1;
            return;
        };
        let Some(&i) = self.by_id.get(&id) else {
            return;
        };
        if preempt {
            self.preempted(i, now);
        } else {
            self.placed(i, now);
        }
        for e in effects {
            let cmd = match e {
                Effect::StartJob { node, job } => Command::JobStarted {
                    node,
                    job,
                    started_at: now,
                },
                // The stopped task ends at once; what it had not
                // checkpointed is lost.
                Effect::StopJob { node, job, .. } => Command::JobExited {
                    node,
                    job,
                    exit_code: None,
                    reason: "stopped".into(),
                    finished_at: now,
                    usage: JobUsage::default(),
                },
                _ => continue,
            };
            if self.apply(cmd, now).is_none() {
                self.run.rejected += 1;
            }
        }
    }

    fn placed(&mut self, i: usize, now: Millis) {
        let job = &self.jobs[i];
        let sim = &mut self.sims[i];
        sim.runs += 1;
        sim.placed = true;
        sim.out.queued_ms += now - sim.queued_since;
        sim.out.first_start.get_or_insert(now);
        sim.run_start = now;
        sim.delay_ms = if sim.runs > 1 {
            self.params.restart_delay_ms
        } else {
            0
        };
        let ends = now + sim.delay_ms + (job.duration - sim.saved_ms).max(0);
        self.exits.push(Reverse((ends, i, sim.runs)));
        self.busy_now += u64::from(job.held());
        let queued_since = sim.queued_since;
        let claimant = sim
            .id
            .and_then(|id| self.state.job(id))
            .filter(|j| j.reclaimed);
        if let Some(wait) = claimant.and_then(|j| j.wait_ms()) {
            let demand = self.unmet_since[job.tenant]
                .unwrap_or(now)
                .max(queued_since);
            self.run.reclaim_ms.push(now - demand);
            self.run.claimant_wait_ms.push(wait);
        }
        self.queued(i, false);
    }

    /// Counts job `i` into (or out of) its member's pending jobs.
    fn queued(&mut self, i: usize, pending: bool) {
        let job = &self.jobs[i];
        let sizes = &mut self.pending[job.tenant];
        if pending {
            *sizes.entry(job.held()).or_default() += 1;
        } else if let Some(n) = sizes.get_mut(&job.held()) {
            *n -= 1;
            if *n == 0 {
                sizes.remove(&job.held());
            }
        }
    }

    /// After the rounds of an instant: a member below its guarantee with
    /// a pending job that fits in what is left of it has guaranteed
    /// demand the planner did not meet; it has been waiting since the
    /// first such instant. The reclaim latency of a placement that needed
    /// others preempted runs from then (or from its own queueing, if
    /// later), not from the job's submission: waiting behind the member's
    /// own work is queueing, not reclaiming.
    fn watch_guarantees(&mut self, now: Millis) {
        let books = planner::accounting::Books::new(&self.state, now);
        for (m, member) in self.members.iter().enumerate() {
            let room = books.tenants.get(&member.name).map_or(0, |b| {
                let guaranteed: u64 = b.guaranteed.values().sum();
                guaranteed.saturating_sub(b.held.values().sum())
            });
            let smallest = self.pending[m].keys().next().copied();
            let unmet = smallest.is_some_and(|g| u64::from(g) * u64::from(WHOLE_GPU) <= room);
            match (unmet, self.unmet_since[m]) {
                (true, None) => self.unmet_since[m] = Some(now),
                (false, Some(_)) => self.unmet_since[m] = None,
                _ => {}
            }
        }
    }

    fn preempted(&mut self, i: usize, now: Millis) {
        let held = i64::from(self.jobs[i].held());
        let interval = self.params.checkpoint_ms.max(1);
        let sim = &mut self.sims[i];
        let ran = now - sim.run_start;
        let work = (ran - sim.delay_ms).max(0);
        let kept = work / interval * interval;
        sim.saved_ms += kept;
        sim.out.lost_gpu_ms += held * (work - kept + ran.min(sim.delay_ms));
        sim.out.preemptions += 1;
        sim.placed = false;
        sim.queued_since = now;
        self.busy_now -= held as u64;
        self.queued(i, true);
    }
}
