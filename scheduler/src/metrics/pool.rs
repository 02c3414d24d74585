//! Gauges that describe the pool, computed from the replicated `State` at
//! scrape time. This is the only place they are derived; nothing keeps a
//! second copy that could drift from the log.
//!
//! GPUs are labelled by GPU class (the model family, or the node's class
//! label), site and owner. Tenant figures (guarantee, in use, borrowed,
//! lent, fair-share usage) come from the planner's per-tenant books
//! (`planner::accounting::tenant_reports`), the same numbers the planner
//! decides by.

use std::collections::BTreeSet;

use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use crate::planner::accounting;
use crate::state::{Indexed, JobClass, JobState, Millis, NodeStatus, State, WHOLE_GPU};

/// The owner label of a node no tenant contributed.
const NO_OWNER: &str = "none";

const PRIORITIES: [JobClass; 4] = [
    JobClass::Inference,
    JobClass::Training,
    JobClass::Batch,
    JobClass::Scavenger,
];

/// Job states that describe work in the pool (final states are counted by
/// `edupool_job_transitions_total` instead).
const ACTIVE_STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Assigned,
    JobState::Running,
    JobState::Cancelling,
    JobState::Preempting,
];

const NODE_STATUSES: [NodeStatus; 3] = [NodeStatus::Ready, NodeStatus::Down, NodeStatus::Lost];

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
        NodeStatus::Lost => "lost",
    }
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Every pool gauge, from `state` as of `now` (used for ages only).
pub fn families(state: &Indexed, now: Millis) -> Vec<MetricFamily> {
    let mut out = gpu_families(state);
    out.extend(node_families(state));
    out.extend(tenant_families(state, now));
    out.extend(super::budget::families(state, now));
    out.extend(super::audit::families(state));
    out
}

fn gpu_families(state: &State) -> Vec<MetricFamily> {
    let labels = ["class", "site", "owner", "node"];
    let total = gauge(
        "edupool_pool_gpus",
        "GPUs in the pool, by GPU class, site, owner and node.",
        &labels,
    );
    let healthy = gauge(
        "edupool_pool_gpus_healthy",
        "Usable GPUs (healthy, and no fault waiting for an admin to clear it), by GPU class, site, owner and node.",
        &labels,
    );
    let allocated = gauge(
        "edupool_pool_gpus_allocated",
        "GPUs held by jobs (fractions count as parts of a GPU), by GPU class, site, owner and node.",
        &labels,
    );
    for n in state.nodes() {
        let owner = n.labels.owner.as_deref().unwrap_or(NO_OWNER);
        for g in &n.gpus {
            let l = [n.gpu_class(g), n.site(), owner, n.name.as_str()];
            total.with_label_values(&l).inc();
            let h = healthy.with_label_values(&l);
            let a = allocated.with_label_values(&l);
            if g.usable() {
                h.inc();
            }
            a.add(f64::from(g.used_milli()) / f64::from(WHOLE_GPU));
        }
    }
    [total, healthy, allocated]
        .iter()
        .flat_map(prometheus::core::Collector::collect)
        .collect()
}

fn node_families(state: &State) -> Vec<MetricFamily> {
    let status = gauge(
        "edupool_node_status",
        "1 for the node's current status (ready: agent connected; down: agent gone; lost: gone past the timeout), 0 for the others.",
        &["node", "status"],
    );
    let schedulable = gauge(
        "edupool_node_schedulable",
        "1 if the planner may place jobs on the node (ready, neither cordoned nor draining).",
        &["node"],
    );
    let host = |name: &str, help: &str| gauge(name, help, &["node"]);
    let cpu = host(
        "edupool_node_cpu_allocatable_cores",
        "CPU cores jobs may use on the node, as its agent reported them (after the system reserve).",
    );
    let cpu_free = host(
        "edupool_node_cpu_free_cores",
        "CPU cores of the node no placed job holds.",
    );
    let memory = host(
        "edupool_node_memory_allocatable_bytes",
        "Host memory jobs may use on the node, as its agent reported it (after the system reserve).",
    );
    let memory_free = host(
        "edupool_node_memory_free_bytes",
        "Host memory of the node no placed job holds.",
    );
    for n in state.nodes() {
        for s in NODE_STATUSES {
            let v = if n.status == s { 1.0 } else { 0.0 };
            status.with_label_values(&[&n.name, status_name(s)]).set(v);
        }
        let v = if n.schedulable() { 1.0 } else { 0.0 };
        schedulable.with_label_values(&[&n.name]).set(v);
        let (all, free) = (n.host_allocatable(), n.host_free());
        let cores = |m: u64| m as f64 / 1000.0;
        cpu.with_label_values(&[&n.name])
            .set(cores(all.cpu_millicores));
        cpu_free
            .with_label_values(&[&n.name])
            .set(cores(free.cpu_millicores));
        memory
            .with_label_values(&[&n.name])
            .set(all.memory_bytes as f64);
        memory_free
            .with_label_values(&[&n.name])
            .set(free.memory_bytes as f64);
    }
    [status, schedulable, cpu, cpu_free, memory, memory_free]
        .iter()
        .flat_map(prometheus::core::Collector::collect)
        .collect()
}

fn tenant_families(state: &Indexed, now: Millis) -> Vec<MetricFamily> {
    let by_class = ["tenant", "class"];
    let in_use = gauge(
        "edupool_tenant_gpus_in_use",
        "GPUs held by the tenant's jobs, by GPU class.",
        &by_class,
    );
    let guarantee = gauge(
        "edupool_tenant_guarantee_gpus",
        "GPUs guaranteed to the tenant (its contribution, or the admin's quota), by GPU class.",
        &by_class,
    );
    let borrowed = gauge(
        "edupool_tenant_borrowed_gpus",
        "GPUs the tenant's jobs hold above its guarantee, by GPU class.",
        &by_class,
    );
    let lent = gauge(
        "edupool_tenant_lent_gpus",
        "GPUs of the tenant's own nodes held by other tenants' jobs, by GPU class.",
        &by_class,
    );
    let usage = gauge(
        "edupool_tenant_fair_share_usage",
        "The tenant's part (0-1) of the pool's decayed, class-weighted GPU usage.",
        &["tenant"],
    );
    let jobs = gauge(
        "edupool_tenant_jobs",
        "The tenant's jobs in each active state.",
        &["tenant", "state"],
    );
    let pending_jobs = gauge(
        "edupool_tenant_pending_jobs",
        "The tenant's jobs waiting for GPUs, by priority class.",
        &["tenant", "priority"],
    );
    let pending_gpus = gauge(
        "edupool_tenant_pending_gpus",
        "GPUs asked for by the tenant's waiting jobs, by priority class.",
        &["tenant", "priority"],
    );
    let oldest = gauge(
        "edupool_tenant_oldest_pending_age_seconds",
        "How long the tenant's oldest waiting job has waited since submission; 0 when none waits.",
        &["tenant"],
    );

    // Every tenant appears with every label value, zeros included, so a
    // tenant with nothing running still has a row on the dashboards.
    let classes: BTreeSet<&str> = state
        .nodes()
        .flat_map(|n| n.gpus.iter().map(|g| n.gpu_class(g)))
        .collect();
    let gpus = |milli: u64| milli as f64 / f64::from(WHOLE_GPU);
    for report in accounting::tenant_reports(state, now) {
        let t = report.name.as_str();
        for c in &classes {
            for g in [&in_use, &guarantee, &borrowed, &lent] {
                g.with_label_values(&[t, c]).set(0.0);
            }
        }
        for c in &report.classes {
            let l = [t, c.gpu_class.as_str()];
            in_use.with_label_values(&l).set(gpus(c.in_use));
            guarantee.with_label_values(&l).set(gpus(c.guaranteed));
            borrowed.with_label_values(&l).set(gpus(c.borrowed));
            lent.with_label_values(&l).set(gpus(c.lent));
        }
        usage.with_label_values(&[t]).set(report.usage_share);
        for s in ACTIVE_STATES {
            jobs.with_label_values(&[t, s.name()]).set(0.0);
        }
        for p in PRIORITIES {
            pending_jobs.with_label_values(&[t, p.name()]).set(0.0);
            pending_gpus.with_label_values(&[t, p.name()]).set(0.0);
        }
        oldest.with_label_values(&[t]).set(0.0);
    }
    for j in state.live_jobs() {
        jobs.with_label_values(&[j.tenant.as_str(), j.state.name()])
            .inc();
    }
    for j in state.pending_jobs() {
        let l = [j.tenant.as_str(), j.spec.class.name()];
        pending_jobs.with_label_values(&l).inc();
        pending_gpus
            .with_label_values(&l)
            .add(gpus(j.spec.demand_milli()));
        let age = (now - j.submitted_at).max(0) as f64 / 1000.0;
        let o = oldest.with_label_values(&[j.tenant.as_str()]);
        if age > o.get() {
            o.set(age);
        }
    }
    [
        in_use,
        guarantee,
        borrowed,
        lent,
        usage,
        jobs,
        pending_jobs,
        pending_gpus,
        oldest,
    ]
    .iter()
    .flat_map(prometheus::core::Collector::collect)
    .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::state::tests_support::*;
    use crate::state::Command;

    /// The value of the sample of `name` with exactly these labels.
    pub(in crate::metrics) fn value(
        families: &[MetricFamily],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<f64> {
        let family = families.iter().find(|f| f.name() == name)?;
        family
            .get_metric()
            .iter()
            .find(|m| {
                let have: BTreeSet<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                have == labels.iter().copied().collect()
            })
            .map(|m| m.get_gauge().get_value())
    }

    #[test]
    fn a_placed_job_raises_allocated_gpus_for_its_tenant_and_class() {
        let mut s = Indexed::default();
        tenant(&mut s, "zju");
        tenant(&mut s, "hdu");
        node(&mut s, "n1", 4);
        let job = submit(&mut s, "zju", 2, JobClass::Training);

        let before = families(&s, 0);
        let class = [
            ("class", "A100"),
            ("site", "default"),
            ("owner", "none"),
            ("node", "n1"),
        ];
        assert_eq!(value(&before, "edupool_pool_gpus", &class), Some(4.0));
        assert_eq!(
            value(&before, "edupool_pool_gpus_allocated", &class),
            Some(0.0)
        );
        let zju_a100 = [("tenant", "zju"), ("class", "A100")];
        assert_eq!(
            value(&before, "edupool_tenant_gpus_in_use", &zju_a100),
            Some(0.0)
        );
        let zju_training = [("tenant", "zju"), ("priority", "training")];
        assert_eq!(
            value(&before, "edupool_tenant_pending_jobs", &zju_training),
            Some(1.0)
        );
        assert_eq!(
            value(&before, "edupool_tenant_pending_gpus", &zju_training),
            Some(2.0)
        );

        apply_ok(
            &mut s,
            Command::PlaceJob {
                job,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0), uuid("n1", 1)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        let after = families(&s, 0);
        assert_eq!(
            value(&after, "edupool_pool_gpus_allocated", &class),
            Some(2.0)
        );
        assert_eq!(
            value(&after, "edupool_tenant_gpus_in_use", &zju_a100),
            Some(2.0)
        );
        let hdu_a100 = [("tenant", "hdu"), ("class", "A100")];
        assert_eq!(
            value(&after, "edupool_tenant_gpus_in_use", &hdu_a100),
            Some(0.0)
        );
        assert_eq!(
            value(&after, "edupool_tenant_pending_jobs", &zju_training),
            Some(0.0)
        );
        let assigned = [("tenant", "zju"), ("state", "assigned")];
        assert_eq!(value(&after, "edupool_tenant_jobs", &assigned), Some(1.0));
    }

    #[test]
    fn finished_jobs_give_their_gpus_back() {
        let mut s = Indexed::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 2);
        let job = submit(&mut s, "zju", 2, JobClass::Batch);
        apply_ok(
            &mut s,
            Command::PlaceJob {
                job,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0), uuid("n1", 1)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        exit_ok(&mut s, "n1", job, 5);
        let f = families(&s, 10);
        let class = [
            ("class", "A100"),
            ("site", "default"),
            ("owner", "none"),
            ("node", "n1"),
        ];
        assert_eq!(value(&f, "edupool_pool_gpus_allocated", &class), Some(0.0));
        let zju_a100 = [("tenant", "zju"), ("class", "A100")];
        assert_eq!(
            value(&f, "edupool_tenant_gpus_in_use", &zju_a100),
            Some(0.0)
        );
        let running = [("tenant", "zju"), ("state", "running")];
        assert_eq!(value(&f, "edupool_tenant_jobs", &running), Some(0.0));
    }

    #[test]
    fn node_status_and_queue_age_follow_the_state() {
        let mut s = Indexed::default();
        tenant(&mut s, "zju");
        node(&mut s, "n1", 1);
        // Two GPUs fit nowhere free once the first job holds the only one.
        let first = submit(&mut s, "zju", 1, JobClass::Batch);
        apply_ok(
            &mut s,
            Command::PlaceJob {
                job: first,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        submit(&mut s, "zju", 1, JobClass::Batch);
        let submitted = s.pending_jobs().next().expect("one waits").submitted_at;
        let f = families(&s, submitted + 90_000);
        assert_eq!(
            value(
                &f,
                "edupool_tenant_oldest_pending_age_seconds",
                &[("tenant", "zju")]
            ),
            Some(90.0)
        );
        let ready = [("node", "n1"), ("status", "ready")];
        assert_eq!(value(&f, "edupool_node_status", &ready), Some(1.0));

        apply_ok(&mut s, Command::NodeDisconnected { node: "n1".into() });
        let f = families(&s, 0);
        assert_eq!(value(&f, "edupool_node_status", &ready), Some(0.0));
        let down = [("node", "n1"), ("status", "down")];
        assert_eq!(value(&f, "edupool_node_status", &down), Some(1.0));
        assert_eq!(
            value(&f, "edupool_node_schedulable", &[("node", "n1")]),
            Some(0.0)
        );
    }

    #[test]
    fn node_cpu_and_memory_gauges_follow_placed_jobs() {
        let mut s = Indexed::default();
        tenant(&mut s, "zju");
        apply_ok(
            &mut s,
            Command::NodeConnected {
                node: "n1".into(),
                gpus: crate::state::tests_support::gpus("n1", 2),
                agent_version: "test".into(),
                images: vec![],
                allows_host_jobs: true,
                cpu_millicores: 16_000,
                memory_bytes: 64 << 30,
            },
        );
        let mut spec = crate::state::tests_support::spec(1, JobClass::Batch);
        spec.cpu_millicores = 2_500;
        spec.memory_bytes = 8 << 30;
        let job = match s.apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec,
            },
            0,
        ) {
            Ok((crate::state::Outcome::Job(id), _)) => id,
            other => panic!("{other:?}"),
        };
        apply_ok(
            &mut s,
            Command::PlaceJob {
                job,
                tasks: vec![crate::state::TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0)],
                }],
                capacity: crate::state::Capacity::Guaranteed,
            },
        );
        let f = families(&s, 0);
        let n1 = [("node", "n1")];
        let at = |name| value(&f, name, &n1);
        assert_eq!(at("edupool_node_cpu_allocatable_cores"), Some(16.0));
        assert_eq!(at("edupool_node_cpu_free_cores"), Some(13.5));
        assert_eq!(
            at("edupool_node_memory_allocatable_bytes"),
            Some((64u64 << 30) as f64)
        );
        assert_eq!(
            at("edupool_node_memory_free_bytes"),
            Some((56u64 << 30) as f64)
        );
    }
}
