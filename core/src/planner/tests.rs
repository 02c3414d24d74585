//! One table test per policy rule, asserting the exact decisions.

use super::accounting::{reclaim_latencies, tenant_reports, Books};
use super::*;
use crate::state::tests_support::{spec, uuid};
use crate::state::{Effect, GpuInfo, JobSpec, JobState, NodeLabels, Quota, WHOLE_GPU};

pub(super) const T0: Millis = 1_700_000_000_000;

/// A pool under test: the state (with its planner indexes) and a clock.
pub(super) struct Pool {
    pub s: Indexed,
    pub now: Millis,
}

impl Pool {
    pub fn new(tenants: &[&str]) -> Pool {
        let mut p = Pool {
            s: Indexed::default(),
            now: T0,
        };
        for t in tenants {
            p.ok(Command::CreateTenant {
                name: t.to_string(),
                token_hash: format!("hash-{t}"),
            });
        }
        p.ok(Command::AssignUidOffsets);
        p.ok(Command::StartMixTally);
        p
    }

    pub fn ok(&mut self, cmd: Command) -> Vec<Effect> {
        self.s
            .apply(cmd.clone(), self.now)
            .unwrap_or_else(|e| panic!("{cmd:?} rejected: {e}"))
            .1
    }

    /// A node of `n` GPUs of `model`, owned by `owner`, in `site`.
    pub fn node(&mut self, name: &str, n: u32, model: &str, owner: Option<&str>, site: &str) {
        self.node_with(
            name,
            n,
            model,
            NodeLabels {
                owner: owner.map(String::from),
                site: Some(site.into()),
                ..Default::default()
            },
        );
    }

    pub fn node_with(&mut self, name: &str, n: u32, model: &str, labels: NodeLabels) {
        let gpus = (0..n)
            .map(|i| GpuInfo {
                uuid: uuid(name, i),
                index: i,
                model: model.into(),
                memory_bytes: if model.contains("40GB") {
                    40 << 30
                } else {
                    80 << 30
                },
                healthy: true,
                peers: vec![],
                health_reason: String::new(),
                pci_bus_id: String::new(),
                nvlink_peers: vec![],
                compute_capability: String::new(),
            })
            .collect();
        self.ok(Command::NodeConnected {
            node: name.into(),
            gpus,
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: 0,
            memory_bytes: 0,
        });
        self.ok(Command::LabelNode {
            node: name.into(),
            labels,
        });
    }

    pub fn submit(&mut self, tenant: &str, spec: JobSpec) -> JobId {
        match self.s.apply(
            Command::SubmitJob {
                tenant: tenant.into(),
                spec,
            },
            self.now,
        ) {
            Ok((crate::state::Outcome::Job(id), _)) => id,
            other => panic!("submit: {other:?}"),
        }
    }

    pub fn plan(&self) -> Vec<Decision> {
        plan(&self.s, self.now, &Policy::default())
    }

    /// Applies decisions and starts every placed task.
    pub fn apply(&mut self, decisions: &[Decision]) {
        for d in decisions {
            self.ok(d.clone().into_command());
            if let Decision::Place { job, tasks, .. } = d {
                for t in tasks {
                    self.ok(Command::JobStarted {
                        node: t.node.clone(),
                        job: *job,
                        started_at: self.now,
                    });
                }
            }
        }
    }

    /// Plans one round and applies it.
    pub fn round(&mut self) -> Vec<Decision> {
        let d = self.plan();
        self.apply(&d);
        d
    }

    /// Every task of the job exits with `code`.
    pub fn exit(&mut self, job: JobId, code: i32) {
        let nodes: Vec<String> = self.s.job(job).unwrap().nodes().map(String::from).collect();
        for node in nodes {
            self.ok(Command::JobExited {
                node,
                job,
                exit_code: Some(code),
                reason: String::new(),
                finished_at: self.now,
                usage: Default::default(),
            });
        }
    }

    pub fn explain(&self, job: JobId) -> String {
        explain(&self.s, self.now, &Policy::default(), job).unwrap()
    }
}

pub(super) fn job(gpus: u32, class: JobClass) -> JobSpec {
    spec(gpus, class)
}

/// A placement decision in short: job, [(node, [GPU indexes])], terms.
fn place(job: JobId, tasks: &[(&str, &[u32])], capacity: Capacity) -> Decision {
    Decision::Place {
        job,
        tasks: tasks
            .iter()
            .map(|(n, g)| TaskPlacement {
                node: n.to_string(),
                gpus: g.iter().map(|i| uuid(n, *i)).collect(),
            })
            .collect(),
        capacity,
    }
}

fn preempt(job: JobId, tenant: &str, class: &str, for_job: JobId) -> Decision {
    Decision::Preempt {
        job,
        reason: format!(
            "preempted: tenant '{tenant}' reclaims its guaranteed {class} GPUs for {for_job}"
        ),
        for_job,
    }
}

const A100: &str = "A100-80GB";

#[test]
fn a_failed_gpu_lowers_its_owners_guarantee_and_is_never_placed_on() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 2, A100, Some("zju"), "hz");
    p.ok(Command::GpuHealthChanged {
        node: "n1".into(),
        gpu: uuid("n1", 0),
        healthy: false,
        reason: "XID 79".into(),
        cleared_by: None,
    });
    // Reset: the agent reports it healthy, but until an admin clears the
    // fault the GPU is neither counted nor used.
    p.ok(Command::GpuHealthChanged {
        node: "n1".into(),
        gpu: uuid("n1", 0),
        healthy: true,
        reason: String::new(),
        cleared_by: None,
    });
    assert_eq!(
        Books::new(&p.s, p.now).tenants["zju"].guaranteed("A100"),
        1000
    );
    let j = p.submit("zju", job(1, JobClass::Batch));
    assert_eq!(
        p.round(),
        vec![place(j, &[("n1", &[1])], Capacity::Guaranteed)]
    );
    let k = p.submit("zju", job(1, JobClass::Batch));
    assert_eq!(p.plan(), vec![], "the faulted GPU is not placed on");
    p.ok(Command::GpuHealthChanged {
        node: "n1".into(),
        gpu: uuid("n1", 0),
        healthy: true,
        reason: String::new(),
        cleared_by: Some("admin".into()),
    });
    assert_eq!(
        Books::new(&p.s, p.now).tenants["zju"].guaranteed("A100"),
        2000
    );
    assert_eq!(
        p.round(),
        vec![place(k, &[("n1", &[0])], Capacity::Guaranteed)]
    );
}

#[test]
fn guarantee_follows_contributed_healthy_gpus_and_admin_overrides() {
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 4, A100, Some("zju"), "hz");
    p.node("n2", 2, "H100-80GB", Some("zju"), "hz");
    let books = Books::new(&p.s, p.now);
    assert_eq!(books.tenants["zju"].guaranteed("A100"), 4 * 1000);
    assert_eq!(books.tenants["zju"].guaranteed("H100"), 2 * 1000);
    assert_eq!(books.tenants["hdu"].guaranteed("A100"), 0);
    // A node that goes down lowers its owner's guarantee.
    p.ok(Command::NodeDisconnected { node: "n2".into() });
    assert_eq!(Books::new(&p.s, p.now).tenants["zju"].guaranteed("H100"), 0);
    // The admin's quota overrides contribution.
    p.ok(Command::SetTenantQuota {
        tenant: "hdu".into(),
        gpu_class: "A100".into(),
        quota: Quota {
            guaranteed: Some(1),
            borrow_limit: None,
        },
    });
    assert_eq!(
        Books::new(&p.s, p.now).tenants["hdu"].guaranteed("A100"),
        1000
    );
}

#[test]
fn own_capacity_then_borrowing_up_to_the_limit() {
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 4, A100, Some("zju"), "hz");
    p.ok(Command::SetTenantQuota {
        tenant: "hdu".into(),
        gpu_class: "A100".into(),
        quota: Quota {
            guaranteed: None,
            borrow_limit: Some(2),
        },
    });
    let a = p.submit("zju", job(1, JobClass::Batch));
    let b = p.submit("hdu", job(1, JobClass::Batch));
    let c = p.submit("hdu", job(1, JobClass::Batch));
    let d = p.submit("hdu", job(1, JobClass::Batch));
    // zju is within its guarantee, so it goes first; hdu borrows two.
    assert_eq!(
        p.round(),
        vec![
            place(a, &[("n1", &[0])], Capacity::Guaranteed),
            place(b, &[("n1", &[1])], Capacity::Borrowed),
            place(c, &[("n1", &[2])], Capacity::Borrowed),
        ]
    );
    assert_eq!(p.s.job(a).unwrap().capacity, Capacity::Own);
    assert_eq!(p.s.job(b).unwrap().tasks[0].lender.as_deref(), Some("zju"));
    assert!(
        p.explain(d).starts_with("borrow limit:"),
        "{}",
        p.explain(d)
    );
}

#[test]
fn within_a_tenant_class_then_priority_then_submit_time() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 1, A100, None, "hz");
    let batch = p.submit("zju", job(1, JobClass::Batch));
    let low = p.submit("zju", job(1, JobClass::Training));
    let high = p.submit(
        "zju",
        JobSpec {
            priority: 5,
            ..job(1, JobClass::Training)
        },
    );
    let infer = p.submit("zju", job(1, JobClass::Inference));
    let order = |p: &mut Pool| {
        let d = p.round();
        let id = d[0].job();
        p.exit(id, 0);
        id
    };
    assert_eq!(
        [order(&mut p), order(&mut p), order(&mut p), order(&mut p)],
        [infer, high, low, batch]
    );
}

#[test]
fn class_cap_limits_what_a_job_class_takes_of_the_guarantee() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 4, A100, Some("zju"), "hz");
    p.ok(Command::SetClassCap {
        tenant: "zju".into(),
        job_class: JobClass::Batch,
        max_gpus: Some(2),
    });
    let a = p.submit("zju", job(2, JobClass::Batch));
    let b = p.submit("zju", job(2, JobClass::Batch));
    let d = p.round();
    // The second batch job is over the cap: it runs, but as borrowed
    // capacity (preemptible), not on the guarantee.
    assert_eq!(
        d,
        vec![
            place(a, &[("n1", &[0, 1])], Capacity::Guaranteed),
            place(b, &[("n1", &[2, 3])], Capacity::Borrowed),
        ]
    );
}

#[test]
fn fair_share_favours_the_tenant_furthest_below_its_weighted_share() {
    let usage = |p: &mut Pool, tenant: &str, secs: i64| {
        p.now += 1;
        let id = p.submit(tenant, job(1, JobClass::Training));
        p.round();
        p.now += secs * 1000;
        p.exit(id, 0);
    };
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 1, A100, None, "hz");
    usage(&mut p, "zju", 100);
    usage(&mut p, "hdu", 10);
    let z = p.submit("zju", job(1, JobClass::Training));
    let h = p.submit("hdu", job(1, JobClass::Training));
    assert_eq!(p.plan()[0].job(), h, "hdu used less");
    // An equity multiplier of 20 makes zju's 100 GPU-seconds weigh less
    // than hdu's 10.
    p.ok(Command::SetTenantShare {
        tenant: "zju".into(),
        weight_milli: 1000,
        equity_milli: 20_000,
    });
    assert_eq!(p.plan()[0].job(), z, "equity lifts zju");
}

#[test]
fn usage_halves_every_half_life() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 1, A100, None, "hz");
    let id = p.submit("zju", job(1, JobClass::Training));
    p.round();
    p.now += 1000 * 1000;
    p.exit(id, 0);
    let half_life = p.s.policy().half_life_ms as Millis;
    let usage = |p: &Pool| tenant_reports(&p.s, p.now)[0].usage_gpu_seconds;
    assert!((usage(&p) - 1000.0).abs() < 1e-6);
    p.now += half_life;
    assert!((usage(&p) - 500.0).abs() < 1e-6);
}

/// hdu owns n1 (4 GPUs); zju borrows all of it.
fn borrowed_pool() -> Pool {
    let mut p = Pool::new(&["zju", "hdu", "sjtu"]);
    p.node("n1", 4, A100, Some("hdu"), "hz");
    p
}

#[test]
fn preemption_takes_scavengers_first_then_least_work_lost() {
    let mut p = borrowed_pool();
    let old = p.submit("zju", job(1, JobClass::Batch));
    p.round();
    p.now += 3_600_000;
    let young = p.submit("zju", job(1, JobClass::Batch));
    let training = p.submit("zju", job(1, JobClass::Training));
    let scav = p.submit("sjtu", job(1, JobClass::Scavenger));
    p.round();
    p.now += 60_000;
    let claim = p.submit("hdu", job(2, JobClass::Training));
    assert_eq!(
        p.plan(),
        vec![
            preempt(scav, "hdu", "A100", claim),
            preempt(young, "hdu", "A100", claim),
        ]
    );
    let _ = (old, training);
}

#[test]
fn inference_is_never_preempted() {
    let mut p = borrowed_pool();
    for _ in 0..4 {
        p.submit("zju", job(1, JobClass::Inference));
    }
    p.round();
    let claim = p.submit("hdu", job(1, JobClass::Training));
    assert_eq!(p.plan(), vec![]);
    assert!(p
        .explain(claim)
        .contains("no borrowed GPUs can be reclaimed"));
}

#[test]
fn never_preempts_beyond_the_claimants_guarantee() {
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 2, A100, Some("hdu"), "hz");
    p.node("n2", 2, A100, None, "hz");
    let mine = p.submit("hdu", job(2, JobClass::Training));
    p.round();
    for _ in 0..2 {
        p.submit("zju", job(1, JobClass::Batch));
    }
    p.round();
    // hdu holds its whole guarantee: more work may only borrow, and
    // borrowing never preempts.
    let more = p.submit("hdu", job(1, JobClass::Training));
    assert_eq!(p.plan(), vec![]);
    assert!(p.explain(more).contains("at or above its guarantee"));
    let _ = mine;
}

#[test]
fn victims_keep_their_grace_period_then_the_claimant_starts() {
    let mut p = borrowed_pool();
    let victim = p.submit("zju", job(4, JobClass::Batch));
    p.round();
    p.now += 10_000;
    let claim = p.submit("hdu", job(4, JobClass::Training));
    // Its wait before the first preemption for it is not reclaiming.
    p.now += 7_000;
    let d = p.round();
    assert_eq!(d, vec![preempt(victim, "hdu", "A100", claim)]);
    assert_eq!(p.s.job(victim).unwrap().state, JobState::Preempting);
    // During the grace period nothing more is preempted, and the node is
    // held for the claimant.
    p.now += 2_000;
    assert_eq!(p.plan(), vec![]);
    assert!(
        p.explain(claim).contains("grace period"),
        "{}",
        p.explain(claim)
    );
    p.now += 3_000;
    p.exit(victim, 143);
    let v = p.s.job(victim).unwrap();
    assert_eq!(
        (v.state, v.attempt, v.preemptions),
        (JobState::Pending, 2, 1)
    );
    assert_eq!(
        p.round(),
        vec![place(claim, &[("n1", &[0, 1, 2, 3])], Capacity::Guaranteed)]
    );
    let c = p.s.job(claim).unwrap();
    assert_eq!(c.capacity, Capacity::Own);
    assert_eq!(c.wait_ms(), Some(12_000));
    let samples = reclaim_latencies(&p.s);
    assert_eq!(samples.len(), 1);
    assert_eq!((samples[0].job, samples[0].latency_ms), (claim, 5_000));
}

/// The GPUs preempted for a claimant are its: borrowing work that comes
/// before it in the queue order (its tenant's first job is not within
/// the guarantee, so the tenant ranks by fair share among borrowers) must
/// not take them again. Before claimants came first, every round gave the
/// freed GPU to the next borrowed job and preempted another, without end.
#[test]
fn the_gpus_reclaimed_for_a_job_are_not_given_to_borrowers_ahead_of_it() {
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 4, A100, Some("hdu"), "hz");
    p.node("n2", 4, A100, None, "hz");
    // hdu has used GPUs before, zju not: among borrowers zju goes first.
    let past = p.submit("hdu", job(1, JobClass::Training));
    p.round();
    p.now += 36_000_000;
    p.exit(past, 0);
    for _ in 0..8 {
        p.submit("zju", job(1, JobClass::Batch));
    }
    p.round();
    p.submit("zju", job(1, JobClass::Batch));
    // hdu's first job is larger than its guarantee; the next fits within.
    let gang = p.submit(
        "hdu",
        JobSpec {
            nodes: 2,
            ..job(4, JobClass::Training)
        },
    );
    let claim = p.submit("hdu", job(1, JobClass::Training));
    // Stopped tasks end at once, as the trace simulator's agents do.
    let mut preempted = vec![];
    for _ in 0..8 {
        for d in p.round() {
            if let Decision::Preempt { job, for_job, .. } = d {
                assert_eq!(for_job, claim);
                preempted.push(job);
                p.exit(job, 143);
            }
        }
        if !preempted.is_empty() && p.s.job(claim).unwrap().state == JobState::Pending {
            let ids: Vec<JobId> = p.s.queues().claimants().collect();
            assert_eq!(ids, vec![claim]);
            let json = serde_json::to_string(p.s.state()).unwrap();
            let loaded: State = serde_json::from_str(&json).unwrap();
            assert_eq!(
                loaded.queues(),
                p.s.queues(),
                "a snapshot rebuilds the claimants"
            );
        }
        if p.s.job(claim).unwrap().state.is_placed() {
            break;
        }
    }
    let c = p.s.job(claim).unwrap();
    assert!(c.state.is_placed(), "the claimant is still {:?}", c.state);
    assert_eq!(c.capacity, Capacity::Guaranteed);
    assert_eq!(preempted.len(), 1, "preempted {preempted:?}");
    assert_eq!(p.s.queues().claimants().count(), 0);
    assert_eq!(p.s.job(gang).unwrap().state, JobState::Pending);
}

#[test]
fn a_preempted_job_that_asks_not_to_be_requeued_fails() {
    let mut p = borrowed_pool();
    let victim = p.submit(
        "zju",
        JobSpec {
            requeue_on_preempt: false,
            ..job(4, JobClass::Batch)
        },
    );
    p.round();
    p.submit("hdu", job(1, JobClass::Training));
    p.round();
    p.exit(victim, 143);
    assert_eq!(p.s.job(victim).unwrap().state, JobState::Failed);
}

#[test]
fn constraints_model_memory_site_and_data_level() {
    let mut p = Pool::new(&["zju"]);
    p.node("a40", 2, "A100-40GB", None, "hz");
    p.node("a80", 2, A100, None, "sh");
    p.node_with(
        "secure",
        2,
        A100,
        NodeLabels {
            site: Some("hz".into()),
            data_level: 3,
            ..Default::default()
        },
    );
    let with = |c: Constraints| JobSpec {
        constraints: c,
        ..job(1, JobClass::Batch)
    };
    let mem = p.submit(
        "zju",
        with(Constraints {
            min_gpu_memory_bytes: 60 << 30,
            site: Some("sh".into()),
            ..Default::default()
        }),
    );
    let model = p.submit(
        "zju",
        with(Constraints {
            gpu_model: Some("A100-40GB".into()),
            ..Default::default()
        }),
    );
    let sensitive = p.submit(
        "zju",
        with(Constraints {
            data_level: 2,
            ..Default::default()
        }),
    );
    let preferred = p.submit(
        "zju",
        with(Constraints {
            preferred_site: Some("sh".into()),
            ..Default::default()
        }),
    );
    assert_eq!(
        p.plan(),
        vec![
            place(mem, &[("a80", &[0])], Capacity::Borrowed),
            place(model, &[("a40", &[0])], Capacity::Borrowed),
            place(sensitive, &[("secure", &[0])], Capacity::Borrowed),
            place(preferred, &[("a80", &[1])], Capacity::Borrowed),
        ]
    );
}

#[test]
fn an_impossible_data_level_or_class_is_refused_at_submit() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 2, A100, None, "hz");
    let level = JobSpec {
        constraints: Constraints {
            data_level: 3,
            ..Default::default()
        },
        ..job(1, JobClass::Batch)
    };
    let err =
        p.s.apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: level,
            },
            p.now,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node in the pool can run this job: no node is certified for data level 3 (the highest is 0)"
    );
    let class = JobSpec {
        constraints: Constraints {
            gpu_class: Some("H100".into()),
            ..Default::default()
        },
        ..job(1, JobClass::Batch)
    };
    let err =
        p.s.apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: class,
            },
            p.now,
        )
        .unwrap_err();
    assert!(err.to_string().contains("class H100"), "{err}");
}

#[test]
fn fractions_pack_where_the_mix_fills_the_remainders() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 2, A100, None, "hz");
    let frac = |m: u32| JobSpec {
        gpu_fraction: m,
        ..job(1, JobClass::Inference)
    };
    let a = p.submit("zju", frac(500));
    let b = p.submit("zju", frac(250));
    let c = p.submit("zju", frac(500));
    let d = p.submit("zju", frac(250));
    // The mix is these four, half 500 and half 250: after `a`, `b` on
    // GPU 0 would leave 250 beside a free GPU, which a 500 cannot use;
    // on GPU 1 it leaves 500 and 750, which the mix fills. Then `c` fills
    // GPU 0 exactly and `d` goes to GPU 1.
    assert_eq!(
        p.round(),
        vec![
            place(a, &[("n1", &[0])], Capacity::Borrowed),
            place(b, &[("n1", &[1])], Capacity::Borrowed),
            place(c, &[("n1", &[0])], Capacity::Borrowed),
            place(d, &[("n1", &[1])], Capacity::Borrowed),
        ]
    );
    let g = &p.s.node("n1").unwrap().gpus;
    assert_eq!((g[0].used_milli(), g[1].used_milli()), (WHOLE_GPU, 500));
}

#[test]
fn packing_keeps_large_blocks_and_breaks_ties_by_node_name() {
    let mut p = Pool::new(&["zju"]);
    p.node("big", 8, A100, None, "hz");
    p.node("small-b", 4, A100, None, "hz");
    p.node("small-a", 4, A100, None, "hz");
    let two = p.submit("zju", job(2, JobClass::Batch));
    let eight = p.submit("zju", job(8, JobClass::Batch));
    // The 2-GPU job takes the smallest node that fits (name order breaks
    // the tie), so the 8-GPU block stays whole.
    assert_eq!(
        p.plan(),
        vec![
            place(two, &[("small-a", &[0, 1])], Capacity::Borrowed),
            place(
                eight,
                &[("big", &[0, 1, 2, 3, 4, 5, 6, 7])],
                Capacity::Borrowed
            ),
        ]
    );
}

#[test]
fn multi_gpu_jobs_get_nvlink_peers() {
    let mut p = Pool::new(&["zju"]);
    let gpus = (0..4)
        .map(|i| GpuInfo {
            uuid: uuid("n1", i),
            index: i,
            model: A100.into(),
            memory_bytes: 80 << 30,
            healthy: true,
            // Two NVLink pairs: 0-1 and 2-3.
            peers: vec![i ^ 1],
            health_reason: String::new(),
            pci_bus_id: String::new(),
            nvlink_peers: vec![],
            compute_capability: String::new(),
        })
        .collect();
    p.ok(Command::NodeConnected {
        node: "n1".into(),
        gpus,
        agent_version: "test".into(),
        images: vec![],
        allows_host_jobs: true,
        cpu_millicores: 0,
        memory_bytes: 0,
    });
    let one = p.submit("zju", job(1, JobClass::Batch));
    let two = p.submit("zju", job(2, JobClass::Batch));
    // GPU 0 goes to the first job; GPUs 1 and 2 are free but not linked,
    // so the pair 2-3 is chosen.
    assert_eq!(
        p.plan(),
        vec![
            place(one, &[("n1", &[0])], Capacity::Borrowed),
            place(two, &[("n1", &[2, 3])], Capacity::Borrowed),
        ]
    );
}

#[test]
fn backfill_runs_small_jobs_only_if_they_end_before_the_reservation() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 4, A100, None, "hz");
    let running = p.submit(
        "zju",
        JobSpec {
            walltime_secs: 3600,
            ..job(3, JobClass::Training)
        },
    );
    p.round();
    let big = p.submit("zju", job(4, JobClass::Training));
    let long = p.submit(
        "zju",
        JobSpec {
            walltime_secs: 7200,
            ..job(1, JobClass::Batch)
        },
    );
    let short = p.submit(
        "zju",
        JobSpec {
            walltime_secs: 600,
            ..job(1, JobClass::Batch)
        },
    );
    assert_eq!(
        p.plan(),
        vec![place(short, &[("n1", &[3])], Capacity::Borrowed)]
    );
    assert!(
        p.explain(big).starts_with("reservation:"),
        "{}",
        p.explain(big)
    );
    // The long job fits on n1's free GPU but would run past the
    // reservation: the explanation names the job holding it and where.
    let why = p.explain(long);
    assert!(
        why.starts_with(&format!(
            "reservation: GPUs it could use are free on n1, but they are reserved for {big} (the first blocked job in the queue) from "
        )),
        "{why}"
    );
    assert!(why.contains("walltime ends before then"), "{why}");
    let _ = running;
}

#[test]
fn gangs_start_together_in_one_site_or_not_at_all() {
    let mut p = Pool::new(&["zju"]);
    p.node("hz-1", 4, A100, None, "hz");
    p.node("sh-1", 4, A100, None, "sh");
    p.node("sh-2", 4, A100, None, "sh");
    let gang = |n| JobSpec {
        nodes: n,
        ..job(4, JobClass::Training)
    };
    let g = p.submit("zju", gang(2));
    let d = p.plan();
    assert_eq!(
        d,
        vec![place(
            g,
            &[("sh-1", &[0, 1, 2, 3]), ("sh-2", &[0, 1, 2, 3])],
            Capacity::Borrowed
        )]
    );
    // Every task's node gets a start order; the job runs when all started.
    let effects = p.ok(d[0].clone().into_command());
    assert_eq!(
        effects,
        vec![
            Effect::StartJob {
                node: "sh-1".into(),
                job: g
            },
            Effect::StartJob {
                node: "sh-2".into(),
                job: g
            },
            Effect::JobChanged(g),
        ]
    );
    let start = |p: &mut Pool, node: &str| {
        p.ok(Command::JobStarted {
            node: node.into(),
            job: g,
            started_at: p.now,
        });
        p.s.job(g).unwrap().state
    };
    assert_eq!(start(&mut p, "sh-1"), JobState::Assigned);
    assert_eq!(start(&mut p, "sh-2"), JobState::Running);
    // A second gang of two does not fit in one site: nothing is placed.
    let other = p.submit("zju", gang(2));
    assert_eq!(p.plan(), vec![]);
    assert!(
        p.explain(other).starts_with("reservation:"),
        "{}",
        p.explain(other)
    );
}

#[test]
fn a_gang_within_its_guarantee_reclaims_on_enough_nodes_of_one_site() {
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("hz-1", 4, A100, Some("hdu"), "hz");
    p.node("hz-2", 4, A100, Some("hdu"), "hz");
    p.node("sh-1", 4, A100, None, "sh");
    let a = p.submit("zju", job(4, JobClass::Batch));
    let b = p.submit("zju", job(4, JobClass::Batch));
    let c = p.submit("zju", job(4, JobClass::Batch));
    p.round();
    p.now += 60_000;
    let gang = p.submit(
        "hdu",
        JobSpec {
            nodes: 2,
            ..job(4, JobClass::Training)
        },
    );
    // zju borrows both of hdu's nodes; the job on sh-1 is not in the way.
    let on = |p: &Pool, j: JobId| p.s.job(j).unwrap().nodes().next().unwrap().to_string();
    let mut victims: Vec<JobId> = [a, b, c]
        .into_iter()
        .filter(|&j| on(&p, j).starts_with("hz"))
        .collect();
    victims.sort();
    let d = p.round();
    assert_eq!(
        d,
        victims
            .iter()
            .map(|&v| preempt(v, "hdu", "A100", gang))
            .collect::<Vec<_>>()
    );
    assert!(
        p.explain(gang).contains("hz-1, hz-2"),
        "{}",
        p.explain(gang)
    );
    // While the victims stop, nothing more is preempted.
    assert_eq!(p.plan(), vec![]);
    for v in victims {
        p.exit(v, 143);
    }
    assert_eq!(
        p.round(),
        vec![place(
            gang,
            &[("hz-1", &[0, 1, 2, 3]), ("hz-2", &[0, 1, 2, 3])],
            Capacity::Guaranteed
        )]
    );
}

#[test]
fn a_failed_task_stops_the_rest_of_the_gang() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 1, A100, None, "hz");
    p.node("n2", 1, A100, None, "hz");
    let g = p.submit(
        "zju",
        JobSpec {
            nodes: 2,
            ..job(1, JobClass::Training)
        },
    );
    p.round();
    let effects = p.ok(Command::JobExited {
        node: "n2".into(),
        job: g,
        exit_code: Some(3),
        reason: String::new(),
        finished_at: p.now,
        usage: Default::default(),
    });
    assert_eq!(
        effects,
        vec![
            Effect::ForgetJob {
                node: "n2".into(),
                job: g
            },
            Effect::StopJob {
                node: "n1".into(),
                job: g,
                grace_secs: 5,
                reason: "another task of the job ended".into()
            },
        ]
    );
    assert_eq!(p.s.node("n2").unwrap().gpus[0].used_milli(), 0);
    p.ok(Command::JobExited {
        node: "n1".into(),
        job: g,
        exit_code: None,
        reason: "stopped".into(),
        finished_at: p.now,
        usage: Default::default(),
    });
    let j = p.s.job(g).unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.exit_code, Some(3));
    assert_eq!(j.reason, "task 1 on n2: exited with code 3");
}

#[test]
fn a_gang_succeeds_when_every_task_exits_zero() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 1, A100, None, "hz");
    p.node("n2", 1, A100, None, "hz");
    let g = p.submit(
        "zju",
        JobSpec {
            nodes: 2,
            ..job(1, JobClass::Training)
        },
    );
    p.round();
    p.exit(g, 0);
    assert_eq!(p.s.job(g).unwrap().state, JobState::Succeeded);
}

#[test]
fn the_round_budget_bounds_decisions() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 8, A100, None, "hz");
    for _ in 0..8 {
        p.submit("zju", job(1, JobClass::Batch));
    }
    let policy = Policy {
        max_decisions: 3,
        ..Policy::default()
    };
    assert_eq!(plan(&p.s, p.now, &policy).len(), 3);
    let reached = Policy {
        max_examined: 2,
        ..Policy::default()
    };
    assert_eq!(plan(&p.s, p.now, &reached).len(), 2);
    let last = p.s.pending_jobs().last().unwrap().id;
    assert!(explain(&p.s, p.now, &reached, last)
        .unwrap()
        .starts_with("queue:"));
}

#[test]
fn a_stale_decision_is_rejected_and_changes_nothing() {
    let mut p = Pool::new(&["zju"]);
    p.node("n1", 1, A100, None, "hz");
    let a = p.submit("zju", job(1, JobClass::Batch));
    let d = p.plan();
    p.ok(Command::CancelJob {
        tenant: None,
        job: a,
        reason: String::new(),
    });
    let before = p.s.state().clone();
    assert!(p.s.apply(d[0].clone().into_command(), p.now).is_err());
    assert_eq!(*p.s.state(), before);
}

#[test]
fn tenant_report_shows_guarantee_use_borrowing_and_lending() {
    let mut p = borrowed_pool();
    p.submit("zju", job(3, JobClass::Batch));
    p.submit("hdu", job(1, JobClass::Training));
    p.round();
    let reports = tenant_reports(&p.s, p.now);
    let of = |name: &str| reports.iter().find(|r| r.name == name).unwrap();
    let hdu = &of("hdu").classes[0];
    assert_eq!(
        (hdu.guaranteed, hdu.in_use, hdu.borrowed, hdu.lent),
        (4000, 1000, 0, 3000)
    );
    let zju = &of("zju").classes[0];
    assert_eq!((zju.guaranteed, zju.in_use, zju.borrowed), (0, 3000, 3000));
}

#[test]
fn fifo_order_ignores_tenants_shares_classes_and_priorities() {
    let fifo = Policy {
        order: QueueOrder::Fifo,
        ..Policy::default()
    };
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 1, A100, None, "hz");
    // zju has used the pool, so fair share would put hdu first; its
    // inference job and high priority would also jump the queue.
    p.now += 1;
    let used = p.submit("zju", job(1, JobClass::Training));
    p.round();
    p.now += 100_000;
    p.exit(used, 0);
    p.now += 1;
    let first = p.submit("zju", job(1, JobClass::Batch));
    p.now += 1;
    let second = p.submit("hdu", job(1, JobClass::Training));
    p.now += 1;
    let third = p.submit(
        "hdu",
        JobSpec {
            priority: 9,
            ..job(1, JobClass::Inference)
        },
    );
    assert_eq!(p.plan()[0].job(), third, "the alliance order");
    let mut order = vec![];
    for _ in 0..3 {
        let d = plan(&p.s, p.now, &fifo);
        assert_eq!(d.len(), 1, "one GPU: one decision a round");
        p.apply(&d);
        order.push(d[0].job());
        p.exit(d[0].job(), 0);
    }
    assert_eq!(order, [first, second, third]);
}

#[test]
fn fifo_order_puts_a_requeued_job_behind_those_queued_before_it() {
    let fifo = Policy {
        order: QueueOrder::Fifo,
        ..Policy::default()
    };
    let mut p = Pool::new(&["zju", "hdu"]);
    p.node("n1", 1, A100, Some("hdu"), "hz");
    let borrower = p.submit("zju", job(1, JobClass::Training));
    p.apply(&plan(&p.s, p.now, &fifo));
    // hdu reclaims its GPU; zju's job goes back to the queue behind the
    // job hdu submits while it stops.
    p.now += 1;
    let owner = p.submit("hdu", job(1, JobClass::Training));
    let d = plan(&p.s, p.now, &fifo);
    assert_eq!(d, vec![preempt(borrower, "hdu", "A100", owner)]);
    p.apply(&d);
    p.now += 1;
    let later = p.submit("hdu", job(1, JobClass::Training));
    p.now += 1;
    p.exit(borrower, 0);
    let mut order = vec![];
    for _ in 0..3 {
        let d = plan(&p.s, p.now, &fifo);
        p.apply(&d);
        order.push(d[0].job());
        p.exit(d[0].job(), 0);
    }
    assert_eq!(order, [owner, later, borrower]);
}
