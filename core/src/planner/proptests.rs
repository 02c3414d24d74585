//! Properties over random clusters and workloads: no GPU or fraction is
//! over-committed and every decision applies; inference is never
//! preempted; the same state gives the same decisions on every replica;
//! a tenant below its guarantee gets its feasible job within one round
//! after the victims' grace periods.

use proptest::prelude::*;

use super::tests::{job, Pool};
use super::*;
use crate::state::{JobSpec, JobState, NodeLabels, WHOLE_GPU};

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
const MODELS: [&str; 2] = ["A100-80GB", "H100-80GB"];
const CLASSES: [JobClass; 4] = [
    JobClass::Inference,
    JobClass::Training,
    JobClass::Batch,
    JobClass::Scavenger,
];

#[derive(Clone, Debug)]
struct NodeGen {
    gpus: u32,
    model: usize,
    owner: Option<usize>,
    site: usize,
    level: u8,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        1u32..=8,
        0usize..2,
        proptest::option::of(0usize..3),
        0usize..2,
        0u8..=2,
    )
        .prop_map(|(gpus, model, owner, site, level)| NodeGen {
            gpus,
            model,
            owner,
            site,
            level,
        })
}

#[derive(Clone, Debug)]
struct JobGen {
    tenant: usize,
    gpus: u32,
    fraction: u32,
    class: usize,
    nodes: u32,
    level: u8,
    site: Option<usize>,
    walltime: u64,
}

fn job_gen(classes: std::ops::Range<usize>) -> impl Strategy<Value = JobGen> {
    (
        0usize..3,
        1u32..=4,
        prop_oneof![3 => Just(0u32), 1 => 1u32..1000],
        classes,
        prop_oneof![4 => Just(1u32), 1 => Just(2u32)],
        0u8..=2,
        proptest::option::of(0usize..2),
        60u64..7200,
    )
        .prop_map(
            |(tenant, gpus, fraction, class, nodes, level, site, walltime)| JobGen {
                tenant,
                gpus,
                fraction,
                class,
                nodes,
                level,
                site,
                walltime,
            },
        )
}

fn spec_of(g: &JobGen) -> JobSpec {
    let fractional = g.fraction > 0 && g.nodes == 1;
    JobSpec {
        gpus: if fractional { 1 } else { g.gpus },
        gpu_fraction: if fractional { g.fraction } else { 0 },
        nodes: g.nodes,
        walltime_secs: g.walltime,
        constraints: Constraints {
            data_level: g.level,
            site: g.site.map(|s| format!("s{s}")),
            ..Default::default()
        },
        ..job(1, CLASSES[g.class])
    }
}

fn build(nodes: &[NodeGen]) -> Pool {
    let mut p = Pool::new(&TENANTS);
    for (i, n) in nodes.iter().enumerate() {
        p.node_with(
            &format!("n{i}"),
            n.gpus,
            MODELS[n.model],
            NodeLabels {
                owner: n.owner.map(|o| TENANTS[o].to_string()),
                site: Some(format!("s{}", n.site)),
                data_level: n.level,
                gpu_class: None,
            },
        );
    }
    p
}

/// Submits, ignoring jobs the pool refuses as infeasible.
fn submit_all(p: &mut Pool, jobs: &[JobGen]) {
    for g in jobs {
        let _ = p.s.apply(
            Command::SubmitJob {
                tenant: TENANTS[g.tenant].into(),
                spec: spec_of(g),
            },
            p.now,
        );
    }
}

fn check_no_overcommit(s: &State) -> Result<(), TestCaseError> {
    for n in s.nodes() {
        for g in &n.gpus {
            prop_assert!(
                g.used_milli() <= WHOLE_GPU,
                "{} over-committed",
                g.info.uuid
            );
            for (id, milli) in &g.holders {
                let j = s.job(*id).expect("holder exists");
                prop_assert!(
                    j.state.is_placed(),
                    "{} holds a GPU while {}",
                    id,
                    j.state.name()
                );
                prop_assert_eq!(*milli, j.spec.milli_per_gpu());
            }
        }
    }
    // The index of placed jobs the planner reads agrees with the jobs.
    let indexed: Vec<JobId> = s.placed_jobs().map(|j| j.id).collect();
    let placed: Vec<JobId> = s
        .jobs()
        .filter(|j| j.state.is_placed())
        .map(|j| j.id)
        .collect();
    prop_assert_eq!(indexed, placed);
    Ok(())
}

/// Applies a round; every decision must apply cleanly.
fn apply_round(p: &mut Pool, decisions: &[Decision]) -> Result<(), TestCaseError> {
    for d in decisions {
        if let Decision::Preempt { job, .. } = d {
            let class = p.s.job(*job).unwrap().spec.class;
            prop_assert_ne!(class, JobClass::Inference, "inference preempted");
        }
        let applied = p.s.apply(d.clone().into_command(), p.now);
        prop_assert!(applied.is_ok(), "{:?} rejected: {:?}", d, applied);
        if let Decision::Place { job, tasks, .. } = d {
            for t in tasks {
                let started = Command::JobStarted {
                    node: t.node.clone(),
                    job: *job,
                    started_at: p.now,
                };
                prop_assert!(p.s.apply(started, p.now).is_ok());
            }
        }
    }
    check_no_overcommit(&p.s)?;
    check_live_index(&p.s)?;
    check_free_index(&p.s)
}

/// The free-capacity index kept between rounds equals one built afresh.
fn check_free_index(s: &Indexed) -> Result<(), TestCaseError> {
    prop_assert!(
        s.kept_indexes_are_exact(),
        "the free-capacity index drifted"
    );
    Ok(())
}

/// The live-job index holds exactly the jobs not yet final.
fn check_live_index(s: &State) -> Result<(), TestCaseError> {
    let live: Vec<JobId> = s.live_jobs().map(|j| j.id).collect();
    let scanned: Vec<JobId> = s
        .jobs()
        .filter(|j| !j.state.is_final())
        .map(|j| j.id)
        .collect();
    prop_assert_eq!(live, scanned);
    Ok(())
}

/// Time passes: preempted jobs finish their grace period, some others end.
fn time_passes(p: &mut Pool, round: usize) {
    p.now += 60_000;
    let ending: Vec<JobId> =
        p.s.jobs()
            .filter(|j| {
                j.state == JobState::Preempting
                    || (j.state == JobState::Running && (j.id.0 as usize + round).is_multiple_of(3))
            })
            .map(|j| j.id)
            .collect();
    for id in ending {
        p.exit(id, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decisions_apply_never_overcommit_and_are_deterministic(
        nodes in proptest::collection::vec(node_gen(), 1..6),
        waves in proptest::collection::vec(proptest::collection::vec(job_gen(0..4), 0..12), 1..4),
    ) {
        let mut p = build(&nodes);
        for (round, wave) in waves.iter().enumerate() {
            submit_all(&mut p, wave);
            let d = p.plan();
            // Another replica, holding the same state from its snapshot.
            let replica: State = serde_json::from_str(&serde_json::to_string(p.s.state()).unwrap()).unwrap();
            prop_assert_eq!(&replica, p.s.state());
            // Its indexes, built afresh, plan as those `apply` kept.
            let replica = Indexed::new(replica);
            prop_assert_eq!(&d, &plan(&replica, p.now, &Policy::default()));
            apply_round(&mut p, &d)?;
            time_passes(&mut p, round);
            check_free_index(&p.s)?;
        }
    }

    #[test]
    fn a_tenant_below_its_guarantee_gets_its_job_one_round_after_grace(
        node_gpus in proptest::collection::vec(1u32..=8, 1..5),
        fillers in proptest::collection::vec(job_gen(1..4), 1..24),
        want in 1u32..=8,
    ) {
        // t0 owns every node; t1 and t2 borrow all of it.
        let mut p = Pool::new(&TENANTS);
        for (i, g) in node_gpus.iter().enumerate() {
            p.node(&format!("n{i}"), *g, MODELS[0], Some("t0"), "s0");
        }
        let fillers: Vec<JobGen> = fillers
            .into_iter()
            .map(|g| JobGen { tenant: 1 + g.tenant % 2, site: None, level: 0, ..g })
            .collect();
        submit_all(&mut p, &fillers);
        for _ in 0..4 {
            let d = p.plan();
            apply_round(&mut p, &d)?;
            if d.is_empty() {
                break;
            }
        }
        let largest = *node_gpus.iter().max().unwrap();
        let want = want.min(largest);
        let claim = p.submit("t0", job(want, JobClass::Training));
        let first = p.plan();
        apply_round(&mut p, &first)?;
        // The victims' grace periods pass.
        p.now += 30_000;
        let preempting: Vec<JobId> = p.s.jobs().filter(|j| j.state == JobState::Preempting).map(|j| j.id).collect();
        for id in preempting {
            p.exit(id, 143);
        }
        let placed_first = first.iter().any(|d| matches!(d, Decision::Place { job, .. } if *job == claim));
        if !placed_first {
            let second = p.plan();
            prop_assert!(
                second.iter().any(|d| matches!(d, Decision::Place { job, .. } if *job == claim)),
                "claim not placed: {}", p.explain(claim)
            );
            apply_round(&mut p, &second)?;
        }
        prop_assert!(p.s.job(claim).unwrap().state.is_placed());
    }
}
