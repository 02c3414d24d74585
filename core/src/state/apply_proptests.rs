//! `apply` is total: arbitrary sequences of arbitrary commands (every
//! variant, including what the API would refuse: unknown ids, zero and
//! huge sizes, duplicate names, stamps out of order, time going
//! backwards, extreme numbers) never panic; a rejected command leaves the
//! state as it was (an audited one adds only its refused-call count); and
//! the same sequence applied to a fresh state gives an equal state and
//! equal results, on any replica.

use proptest::prelude::*;

use super::*;

const TENANTS: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const MODELS: [&str; 2] = ["A100-80GB", "H100-80GB"];
const CLASSES: [JobClass; 4] = [
    JobClass::Inference,
    JobClass::Training,
    JobClass::Batch,
    JobClass::Scavenger,
];

/// The raw draws one command is built from: proptest shrinks these, and
/// `command` turns them into a command of every kind.
type Draw = (u8, [u64; 8]);

/// Reads the draws in turn.
struct Dice<'a> {
    n: &'a [u64; 8],
    next: usize,
}

impl Dice<'_> {
    fn roll(&mut self) -> u64 {
        let v = self.n[self.next % 8].rotate_left(self.next as u32 * 7);
        self.next += 1;
        v
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[(self.roll() % from.len() as u64) as usize].clone()
    }

    fn flip(&mut self) -> bool {
        self.roll().is_multiple_of(2)
    }

    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.flip() {
            Some(f(self))
        } else {
            None
        }
    }

    /// Small counts mostly, sometimes the extremes.
    fn count(&mut self) -> u32 {
        self.pick(&[0, 1, 1, 2, 2, 3, 4, u32::MAX])
    }

    fn big(&mut self) -> u64 {
        let raw = self.roll();
        self.pick(&[0, 1, 1000, 3_600_000, raw, u64::MAX])
    }

    fn millis(&mut self) -> Millis {
        let raw = self.roll() as i64;
        self.pick(&[0, 1_000, 50_000, 10_000_000, raw, i64::MIN, i64::MAX, -5])
    }

    fn text(&mut self) -> String {
        self.pick(&["", "why", "a"]).to_string()
    }

    fn tenant(&mut self) -> String {
        self.pick(&TENANTS).to_string()
    }

    fn node(&mut self) -> String {
        self.pick(&NODES).to_string()
    }

    fn job(&mut self) -> JobId {
        let n = self.roll();
        JobId(self.pick(&[0, 1, 1, 2, 2, 3, 4, 5, 6, 7, u64::MAX, n]))
    }

    fn gpu(&mut self, node: &str) -> String {
        let i = self.pick(&[0, 0, 1, 2, 3, 9]);
        tests_support::uuid(node, i)
    }
}

fn spec(d: &mut Dice) -> JobSpec {
    let gpus = d.pick(&[1, 1, 1, 1, 2, 2, 0, 3, u32::MAX]);
    let mut spec = tests_support::spec(gpus, d.pick(&CLASSES));
    spec.nodes = d.pick(&[1, 1, 1, 1, 1, 2, 2, 0, u32::MAX]);
    spec.gpu_fraction = d.pick(&[0, 0, 0, 0, 0, 250, 500, 999, 1000, 1001, u32::MAX]);
    spec.max_retries = d.pick(&[0, 1, 3, u32::MAX]);
    spec.grace_period_secs = d.pick(&[0, 5, u64::MAX]);
    spec.walltime_secs = d.pick(&[0, 3600, u64::MAX]);
    spec.priority = d.pick(&[0, 0, 5, i32::MIN, i32::MAX]);
    spec.on_node_lost = d.pick(&[OnNodeLost::Requeue, OnNodeLost::Fail]);
    spec.requeue_on_preempt = d.flip();
    if d.roll().is_multiple_of(5) {
        spec.image = Some(d.pick(&["busybox", "torch"]).to_string());
    }
    if d.roll().is_multiple_of(4) {
        spec.constraints = Constraints {
            gpu_model: d.maybe(|d| d.pick(&MODELS).to_string()),
            gpu_class: d.maybe(|d| d.pick(&["A100", "H100", "x"]).to_string()),
            min_gpu_memory_bytes: d.pick(&[0, 80 << 30, u64::MAX]),
            site: d.maybe(|d| d.pick(&["default", "east"]).to_string()),
            data_level: d.pick(&[0, 1, 3, u8::MAX]),
            preferred_site: d.maybe(|d| d.pick(&["default", "east"]).to_string()),
            gpu_classes: vec![],
            gpu_models: vec![],
        };
    }
    spec
}

fn gpus(d: &mut Dice, node: &str) -> Vec<GpuInfo> {
    let n = d.pick(&[0, 1, 2, 4, 4]);
    let model = d.pick(&MODELS);
    let mut gpus = tests_support::gpus(node, n);
    for g in &mut gpus {
        g.model = model.to_string();
        g.healthy = !d.roll().is_multiple_of(6);
        g.memory_bytes = d.pick(&[80 << 30, 0, u64::MAX]);
    }
    gpus
}

fn task(d: &mut Dice) -> TaskPlacement {
    let node = d.node();
    let gpus = (0..d.pick(&[1, 1, 2, 0, 4]))
        .map(|i| {
            if d.roll().is_multiple_of(8) {
                d.gpu(&node)
            } else {
                tests_support::uuid(&node, i)
            }
        })
        .collect();
    TaskPlacement { node, gpus }
}

fn actor(d: &mut Dice) -> Actor {
    Actor {
        token: d.pick(&["tok-1", "tok-2", ""]).to_string(),
        name: d.text(),
        role: d.maybe(|d| d.pick(&Role::ALL)),
        tenant: d.maybe(|d| d.tenant()),
    }
}

fn prices(d: &mut Dice) -> PriceChange {
    PriceChange {
        effective_from: d.maybe(|d| d.millis()),
        currency: d.maybe(|d| d.pick(&["CNY", "", "usd"]).to_string()),
        gpu_hour: (0..d.pick(&[0, 1, 2]))
            .map(|_| GpuPrice {
                model: d.pick(&MODELS).to_string(),
                class: d.maybe(|d| d.pick(&CLASSES)),
                per_gpu_hour: d.big(),
            })
            .collect(),
        energy_per_kwh: d.maybe(|d| d.big()),
        free_milli_gpu_hours: d.maybe(|d| d.big()),
        equity_discount_pct: (0..d.pick(&[0, 1]))
            .map(|_| (d.tenant(), d.pick(&[0, 10, 100, 101, u32::MAX])))
            .collect(),
        lending_credit_pct: d.maybe(|d| d.pick(&[0, 10, 100, 101, u32::MAX])),
    }
}

fn command(kind: u8, d: &mut Dice, depth: u32) -> Command {
    // Job and node commands come up most: they are where the state moves.
    match kind % 32 {
        0 => Command::CreateTenant {
            name: d.tenant(),
            token_hash: format!("h{}", d.roll() % 3),
        },
        28 if d.roll().is_multiple_of(2) => Command::AssignUidOffsets,
        28 => Command::StartMixTally,
        1 | 27 => Command::SubmitJob {
            // Mostly the tenants of the prelude, so that many are accepted.
            tenant: d.pick(&["a", "a", "b", "c"]).to_string(),
            spec: spec(d),
        },
        2 => Command::SubmitArray {
            tenant: d.tenant(),
            spec: spec(d),
            count: d.pick(&[0, 1, 3, MAX_ARRAY + 1, u32::MAX]),
        },
        3 => Command::CancelJob {
            tenant: d.maybe(|d| d.tenant()),
            job: d.job(),
            reason: d.text(),
        },
        4 | 29 => {
            let node = d.node();
            Command::NodeConnected {
                gpus: gpus(d, &node),
                node,
                agent_version: d.text(),
                images: d.pick(&[vec![], vec![], vec!["busybox".to_string()]]),
                allows_host_jobs: !d.roll().is_multiple_of(5),
                cpu_millicores: 0,
                memory_bytes: 0,
            }
        }
        5 => Command::NodeDisconnected { node: d.node() },
        6 => Command::NodeLost { node: d.node() },
        7 => Command::SetNodeSchedulable {
            node: d.node(),
            cordoned: d.roll().is_multiple_of(4),
            draining: d.roll().is_multiple_of(4),
        },
        8 | 30 | 31 => Command::PlaceJob {
            job: d.job(),
            tasks: (0..d.pick(&[1, 1, 1, 2, 0])).map(|_| task(d)).collect(),
            capacity: d.pick(&[
                Capacity::Own,
                Capacity::Guaranteed,
                Capacity::Borrowed,
                Capacity::Idle,
            ]),
        },
        9 | 26 => Command::JobStarted {
            node: d.node(),
            job: d.job(),
            started_at: d.millis(),
        },
        10 | 25 => Command::JobExited {
            node: d.node(),
            job: d.job(),
            exit_code: d.pick(&[Some(0), Some(0), Some(1), None, Some(i32::MIN)]),
            reason: d.text(),
            finished_at: d.millis(),
            usage: JobUsage {
                gpu_ms: d.big(),
                energy_mj: d.big(),
            },
        },
        11 => Command::JobVanished {
            node: d.node(),
            job: d.job(),
            reason: d.text(),
        },
        12 => Command::PreemptJob {
            job: d.job(),
            reason: d.text(),
            for_job: d.maybe(|d| d.job()),
        },
        13 => Command::SetTenantQuota {
            tenant: d.tenant(),
            gpu_class: d.pick(&["A100", "H100"]).to_string(),
            quota: Quota {
                guaranteed: d.maybe(|d| d.count()),
                borrow_limit: d.maybe(|d| d.count()),
            },
        },
        14 => Command::SetTenantShare {
            tenant: d.tenant(),
            weight_milli: d.pick(&[0, 1000, u32::MAX]),
            equity_milli: d.pick(&[0, 1000, u32::MAX]),
        },
        15 => Command::SetClassCap {
            tenant: d.tenant(),
            job_class: d.pick(&CLASSES),
            max_gpus: d.maybe(|d| d.count()),
        },
        16 => Command::LabelNode {
            node: d.node(),
            labels: NodeLabels {
                owner: d.maybe(|d| d.tenant()),
                site: d.maybe(|d| d.pick(&["default", "east"]).to_string()),
                data_level: d.pick(&[0, 1, u8::MAX]),
                gpu_class: d.maybe(|d| d.pick(&["A100", "x"]).to_string()),
            },
        },
        17 => {
            let node = d.node();
            Command::GpuHealthChanged {
                gpu: d.gpu(&node),
                node,
                healthy: d.flip(),
                reason: d.text(),
                cleared_by: d.maybe(|d| d.text()),
            }
        }
        18 => Command::SetPrices(prices(d)),
        19 => Command::SetBudget {
            tenant: d.tenant(),
            budget: d.maybe(|d| Budget {
                period: d.pick(&[
                    billing::Period::Day,
                    billing::Period::Week,
                    billing::Period::Month,
                ]),
                soft: d.maybe(|d| d.big()),
                hard: d.maybe(|d| d.big()),
            }),
        },
        20 => Command::CreateToken {
            token: ApiToken {
                id: d.text(),
                name: d.text(),
                role: d.pick(&Role::ALL),
                tenant: d.maybe(|d| d.tenant()),
                created_at: d.millis(),
                expires_at: d.maybe(|d| d.millis()),
                revoked_at: d.maybe(|d| d.millis()),
                created_by: d.text(),
                hash: format!("t{}", d.roll() % 3),
            },
        },
        21 => Command::RevokeToken {
            id: d.pick(&["tok-1", "tok-2", "init-h0", "nope"]).to_string(),
        },
        22 => Command::SuspendTenant {
            tenant: d.tenant(),
            reason: d.text(),
            stop_running: d.flip(),
            by: d.text(),
        },
        23 => Command::ResumeTenant { tenant: d.tenant() },
        24 if depth < 2 => Command::Audited {
            actor: actor(d),
            action: d
                .pick(&["job.submit", "job.cancel", "token.create"])
                .to_string(),
            target: d.pick(&["", "j-1"]).to_string(),
            cmd: Box::new(command(d.roll() as u8, d, depth + 1)),
        },
        24 => Command::RecordAudit {
            actor: actor(d),
            action: d.text(),
            target: d.text(),
            result: d.pick(&[
                AuditResult::Ok,
                AuditResult::Rejected("no".into()),
                AuditResult::Denied("no".into()),
            ]),
        },
        _ if depth < 2 => Command::SubmitOnce {
            request_id: d.pick(&["r1", "r2", "", "bad id"]).to_string(),
            cmd: Box::new(if d.flip() {
                Command::SubmitJob {
                    tenant: d.tenant(),
                    spec: spec(d),
                }
            } else {
                command(d.roll() as u8, d, depth + 1)
            }),
        },
        _ => Command::NodeDisconnected { node: d.node() },
    }
}

/// A command built from the state it will be applied to, so that
/// placements, starts and exits that can apply come up often; `None`
/// when the state offers nothing of the kind (a random one is built).
fn guided(kind: u8, d: &mut Dice, s: &State, at: Millis) -> Option<Command> {
    let nth = |d: &mut Dice, len: usize| (d.roll() % len.max(1) as u64) as usize;
    match kind % 32 {
        30 | 31 => {
            let pending: Vec<&Job> = s.pending_jobs().collect();
            let job = *pending.get(nth(d, pending.len()))?;
            let milli = job.spec.milli_per_gpu();
            let want = job.spec.gpus as usize;
            let tasks = s
                .nodes()
                .filter(|n| n.schedulable())
                .filter_map(|n| {
                    let gpus: Vec<String> = n
                        .gpus
                        .iter()
                        .filter(|g| g.free_milli() >= milli)
                        .map(|g| g.info.uuid.clone())
                        .take(want)
                        .collect();
                    (gpus.len() == want).then(|| TaskPlacement {
                        node: n.name.clone(),
                        gpus,
                    })
                })
                .take(job.spec.nodes.max(1) as usize)
                .collect();
            Some(Command::PlaceJob {
                job: job.id,
                tasks,
                capacity: d.pick(&[Capacity::Guaranteed, Capacity::Borrowed, Capacity::Own]),
            })
        }
        11 | 25 | 26 => {
            let placed: Vec<&Job> = s.placed_jobs().collect();
            let job = *placed.get(nth(d, placed.len()))?;
            let task = job.tasks.get(nth(d, job.tasks.len()))?;
            let later = at.saturating_add(d.pick(&[0, 1_000, 3_600_000]));
            let odd = d.millis();
            Some(if kind % 32 == 11 {
                Command::JobVanished {
                    node: task.node.clone(),
                    job: job.id,
                    reason: d.text(),
                }
            } else if kind % 32 == 26 {
                Command::JobStarted {
                    node: task.node.clone(),
                    job: job.id,
                    started_at: d.pick(&[at, at, later, odd]),
                }
            } else {
                Command::JobExited {
                    node: task.node.clone(),
                    job: job.id,
                    exit_code: d.pick(&[Some(0), Some(0), Some(1), None]),
                    reason: d.text(),
                    finished_at: d.pick(&[later, later, odd]),
                    usage: JobUsage {
                        gpu_ms: d.big(),
                        energy_mj: d.big(),
                    },
                }
            })
        }
        12 => {
            let placed: Vec<&Job> = s.placed_jobs().collect();
            let job = *placed.get(nth(d, placed.len()))?;
            let claimant = s.pending_jobs().next().map(|j| j.id);
            Some(Command::PreemptJob {
                job: job.id,
                reason: d.text(),
                for_job: claimant.filter(|_| d.flip()),
            })
        }
        _ => None,
    }
}

/// Log stamps: mostly moving forward, sometimes backwards or to the ends
/// of time.
fn stamp(prev: Millis, n: u64) -> Millis {
    match n % 16 {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => prev.saturating_sub((n >> 8) as i64 % 100_000),
        _ => prev.saturating_add((n >> 8) as i64 % 600_000),
    }
}

/// A pool to start from, so that submissions and placements can succeed.
fn prelude() -> Vec<(Command, Millis)> {
    let mut cmds = vec![];
    for t in ["a", "b"] {
        cmds.push(Command::CreateTenant {
            name: t.into(),
            token_hash: format!("h-{t}"),
        });
    }
    for (n, count) in [("n1", 4), ("n2", 2)] {
        cmds.push(Command::NodeConnected {
            node: n.into(),
            gpus: tests_support::gpus(n, count),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: 0,
            memory_bytes: 0,
        });
    }
    cmds.into_iter().map(|c| (c, 1_000)).collect()
}

/// The next command of a sequence and its stamp.
fn next(draw: &Draw, s: &State, prev: Millis) -> (Command, Millis) {
    let (kind, n) = draw;
    let at = stamp(prev, n[7]);
    let mut d = Dice { n, next: 0 };
    // A guided kind the state offers nothing for places a pending job,
    // or else submits one, so that jobs move through their whole life.
    let is_guided = matches!(kind % 32, 11 | 12 | 25 | 26 | 30 | 31);
    let cmd = match guided(*kind, &mut d, s, at) {
        Some(cmd) => cmd,
        None if is_guided => match guided(30, &mut d, s, at) {
            Some(place) => place,
            None => command(27, &mut d, 0),
        },
        None => command(*kind, &mut d, 0),
    };
    (cmd, at)
}

/// The state a rejected command must leave: the one before, with the
/// refused-call record of each audit wrapper around what was refused.
fn after_rejection(before: &State, cmd: &Command, why: &Rejection, at: Millis) -> State {
    match cmd {
        Command::Audited {
            actor,
            action,
            target,
            cmd,
        } => {
            let mut s = after_rejection(before, cmd, why, at);
            let record = Command::RecordAudit {
                actor: actor.clone(),
                action: action.clone(),
                target: target.clone(),
                result: AuditResult::Rejected(why.to_string()),
            };
            let _ = s.apply(record, at);
            s
        }
        Command::SubmitOnce { cmd, .. } => match why {
            Rejection::NotASubmission
            | Rejection::RequestIdReused { .. }
            | Rejection::BadRequestId(_) => before.clone(),
            _ => after_rejection(before, cmd, why, at),
        },
        _ => before.clone(),
    }
}

/// An empty pool that archives final jobs and rolls ledger runs up
/// early, so that sequences this short reach both.
fn fresh() -> State {
    let mut s = State::default();
    s.policy.final_jobs_kept = 3;
    s.policy.ledger_runs_kept = 4;
    s
}

fn draws() -> impl Strategy<Value = Vec<Draw>> {
    prop::collection::vec((any::<u8>(), any::<[u64; 8]>()), 1..64)
}

/// A run whose start the agent reported at the beginning of time and
/// whose exit at its end: its GPU time saturates instead of overflowing
/// (which panicked every replica at this entry).
#[test]
fn a_run_from_the_beginning_to_the_end_of_time_is_recorded() {
    let mut s = fresh();
    for (cmd, _) in prelude() {
        tests_support::apply_ok(&mut s, cmd);
    }
    let job = tests_support::submit(&mut s, "a", 2, JobClass::Batch);
    let tasks = vec![TaskPlacement {
        node: "n1".into(),
        gpus: vec![tests_support::uuid("n1", 0), tests_support::uuid("n1", 1)],
    }];
    let place = Command::PlaceJob {
        job,
        tasks,
        capacity: Capacity::Guaranteed,
    };
    tests_support::apply_ok(&mut s, place);
    let started = Command::JobStarted {
        node: "n1".into(),
        job,
        started_at: i64::MIN,
    };
    tests_support::apply_ok(&mut s, started);
    let exited = Command::JobExited {
        node: "n1".into(),
        job,
        exit_code: Some(0),
        reason: String::new(),
        finished_at: i64::MAX,
        usage: JobUsage {
            gpu_ms: u64::MAX,
            energy_mj: u64::MAX,
        },
    };
    s.apply(exited, i64::MAX).expect("the exit applies");
    assert_eq!(s.job(job).map(|j| j.state), Some(JobState::Succeeded));
    let run = s.accounts().entries.back().expect("the run is recorded");
    assert_eq!((run.start, run.end), (i64::MIN, i64::MAX));
    assert_eq!(run.gpu_milli_ms, u64::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_total_and_a_rejection_changes_nothing(draws in draws()) {
        // The state with the planner's indexes, as a replica holds it.
        let mut s = Indexed::new(fresh());
        let mut cmds = vec![];
        let mut results = vec![];
        let mut at = 1_000;
        let mut draws = draws.iter();
        let mut prelude = prelude().into_iter();
        loop {
            let (cmd, stamp) = if let Some(first) = prelude.next() {
                first
            } else if let Some(draw) = draws.next() {
                next(draw, &s, at)
            } else {
                break;
            };
            at = stamp;
            let before = s.state().clone();
            let applied = s.apply(cmd.clone(), at);
            if let Err(why) = &applied {
                let want = after_rejection(&before, &cmd, why, at);
                prop_assert!(*s.state() == want, "{cmd:?} at {at} was rejected ({why}) but changed the state");
            }
            // The planner's indexes are kept from here on, and must stay
            // equal to ones built afresh.
            let _ = (s.holdings(), s.free_capacity(), s.contributed());
            prop_assert!(s.kept_indexes_are_exact(), "{cmd:?} at {at} left the indexes stale");
            results.push(applied);
            cmds.push((cmd, at));
        }
        // Another replica applying the same log ends in the same place,
        // this one with no index kept.
        let mut again = fresh();
        let replayed: Vec<Applied> =
            cmds.iter().map(|(cmd, at)| again.apply(cmd.clone(), *at)).collect();
        prop_assert!(again == *s.state(), "the same log gave two states");
        prop_assert_eq!(replayed, results);
    }
}
