//! The fragmentation-aware score: where best fit and the expected mix
//! disagree, the planner keeps the mix placeable.

use super::tests::Pool;
use super::*;
use crate::state::tests_support::uuid;
use crate::state::{Constraints, Indexed, JobKind, JobSpec, Outcome};

fn frac(milli: u32, site: Option<&str>) -> JobSpec {
    JobSpec {
        gpu_fraction: milli,
        constraints: Constraints {
            site: site.map(String::from),
            ..Constraints::default()
        },
        ..tests::job(1, JobClass::Batch)
    }
}

/// Two 1-GPU nodes, `a` with 500 thousandths free and `b` with 600, and
/// a recent mix of `mix` (share, jobs) submitted and withdrawn.
fn pool_with_mix(mix: &[(u32, usize)]) -> Pool {
    let mut p = Pool::new(&["zju"]);
    p.node("a", 1, "T4", None, "sa");
    p.node("b", 1, "T4", None, "sb");
    p.submit("zju", frac(500, Some("sa")));
    p.submit("zju", frac(400, Some("sb")));
    assert_eq!(p.round().len(), 2);
    for &(milli, n) in mix {
        for _ in 0..n {
            let id = p.submit("zju", frac(milli, None));
            p.ok(Command::CancelJob {
                tenant: Some("zju".into()),
                job: id,
                reason: "withdrawn".into(),
            });
        }
    }
    p
}

/// Where one 0.3-GPU job goes.
fn node_for_a_third(p: &mut Pool) -> String {
    let id = p.submit("zju", frac(300, None));
    match p.plan().as_slice() {
        [Decision::Place { job, tasks, .. }] if *job == id => {
            assert_eq!(tasks[0].gpus, vec![uuid(&tasks[0].node, 0)]);
            tasks[0].node.clone()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_remainder_the_mix_fills_beats_the_tightest_fit() {
    // Mostly 0.3-GPU jobs, a few of 0.2. On `a` the job would leave 200,
    // which only the rare 0.2-GPU jobs fit; on `b` it leaves 300, which
    // the common 0.3-GPU jobs fit exactly. Best fit (the tightest
    // remainder) would take `a`; the expected fragmentation takes `b`.
    let mut p = pool_with_mix(&[(300, 30), (200, 10)]);
    assert_eq!(node_for_a_third(&mut p), "b");
}

#[test]
fn the_same_job_follows_the_mix() {
    // Mostly 0.2-GPU jobs: a 200 remainder is what they fill, and the
    // tightest fit is also the one the mix prefers.
    let mut p = pool_with_mix(&[(200, 40), (300, 2)]);
    assert_eq!(node_for_a_third(&mut p), "a");
}

#[test]
fn without_a_mix_the_tightest_fit_wins() {
    // A state whose log predates the tally plans as best fit did.
    let mut p = pool_with_mix(&[]);
    let mut json = serde_json::to_value(p.s.state()).unwrap();
    assert!(json.get("mix").is_some());
    json.as_object_mut().unwrap().remove("mix");
    let bare: State = serde_json::from_value(json).unwrap();
    assert!(bare.mix().is_empty());
    p.s = Indexed::new(bare);
    assert_eq!(node_for_a_third(&mut p), "a");
}

#[test]
fn the_tally_follows_the_log_alike_on_every_replica() {
    let run = || {
        let mut p = Pool::new(&["zju"]);
        p.node("a", 2, "T4", None, "sa");
        for i in 0..50u32 {
            p.submit("zju", frac(100 + (i % 7) * 100, None));
            let mut spec = tests::job(1 + i % 2, JobClass::Batch);
            spec.constraints.gpu_model = (i % 3 == 0).then(|| "T4".into());
            p.submit("zju", spec);
        }
        let array = Command::SubmitArray {
            tenant: "zju".into(),
            spec: tests::job(2, JobClass::Batch),
            count: 10,
        };
        assert!(matches!(
            p.s.apply(array, p.now),
            Ok((Outcome::Jobs { count: 10, .. }, _))
        ));
        p.s.state().clone()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.mix(), b.mix());
    let two = JobKind {
        gpus: 2,
        milli: 1000,
        ..JobKind::default()
    };
    // 17 two-GPU jobs without a model (25 minus those bound to T4: 8 of
    // the odd i that are multiples of 3) and the array's 10.
    assert!(a.mix().kinds().contains(&(two, 17 + 10)));
    // A snapshot carries it.
    let back: State = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
    assert_eq!(back.mix(), a.mix());
}

#[test]
fn a_cpu_only_task_leaves_a_gpu_node_the_cores_its_gpu_work_needs() {
    // Two 2-GPU nodes, `a` with 8 cores and `b` with 16; the mix is
    // mostly 1-GPU jobs of 3 cores. A CPU-only job of 6 cores on `a`
    // (the tightest CPU fit) would leave 2 cores, and no GPU job would fit
    // there any more; on `b` it leaves 10, room for both GPUs' jobs.
    let mut p = Pool::new(&["zju"]);
    for (name, cores) in [("a", 8_000), ("b", 16_000)] {
        p.ok(Command::NodeConnected {
            node: name.into(),
            gpus: crate::state::tests_support::gpus(name, 2),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: cores,
            memory_bytes: 64 << 30,
        });
    }
    let gpu_job = JobSpec {
        cpu_millicores: 3_000,
        memory_bytes: 1 << 30,
        ..tests::job(1, JobClass::Batch)
    };
    for _ in 0..10 {
        let id = p.submit("zju", gpu_job.clone());
        p.ok(Command::CancelJob {
            tenant: Some("zju".into()),
            job: id,
            reason: "withdrawn".into(),
        });
    }
    let cpu_job = JobSpec {
        cpu_millicores: 6_000,
        memory_bytes: 1 << 30,
        ..tests::job(0, JobClass::Batch)
    };
    let id = p.submit("zju", cpu_job);
    match p.round().as_slice() {
        [Decision::Place { job, tasks, .. }] if *job == id => assert_eq!(tasks[0].node, "b"),
        other => panic!("{other:?}"),
    }
    // Both nodes still take their GPU jobs.
    let jobs: Vec<JobId> = (0..4).map(|_| p.submit("zju", gpu_job.clone())).collect();
    assert_eq!(p.round().len(), jobs.len());
}
