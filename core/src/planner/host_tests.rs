//! Placement in every dimension: a task fits a node only if its GPUs, CPU
//! and memory all fit; CPU-only work runs anywhere with room, nodes
//! without GPUs first; `explain` names the dimension that is short.

use super::tests::{Pool, T0};
use super::*;
use crate::state::tests_support::{spec, uuid};
use crate::state::{GpuInfo, JobSpec, Rejection};

const GIB: u64 = 1 << 30;

/// A node of `gpus` A100s (or none) with this much CPU and memory.
fn node(p: &mut Pool, name: &str, gpus: u32, model: &str, cpu: u64, memory: u64) {
    let gpus = (0..gpus)
        .map(|i| GpuInfo::plain(uuid(name, i), i, model.into(), 80 * GIB))
        .collect();
    p.ok(Command::NodeConnected {
        node: name.into(),
        gpus,
        agent_version: "test".into(),
        images: vec![],
        allows_host_jobs: true,
        cpu_millicores: cpu,
        memory_bytes: memory,
    });
}

fn job(gpus: u32, cpu: u64, memory: u64) -> JobSpec {
    JobSpec {
        cpu_millicores: cpu,
        memory_bytes: memory,
        ..spec(gpus, JobClass::Batch)
    }
}

fn placed_on(d: &[Decision], id: JobId) -> Option<Vec<String>> {
    d.iter().find_map(|d| match d {
        Decision::Place { job, tasks, .. } if *job == id => {
            Some(tasks.iter().map(|t| t.node.clone()).collect())
        }
        _ => None,
    })
}

#[test]
fn a_task_goes_only_where_gpus_cpu_and_memory_all_fit() {
    let mut p = Pool::new(&["zju"]);
    // n1 has the most GPUs free but little CPU; n2 little memory; n3 room.
    node(&mut p, "n1", 4, "A100-80GB", 2_000, 256 * GIB);
    node(&mut p, "n2", 2, "A100-80GB", 32_000, 8 * GIB);
    node(&mut p, "n3", 2, "A100-80GB", 32_000, 256 * GIB);
    let j = p.submit("zju", job(1, 4_000, 16 * GIB));
    let d = p.round();
    assert_eq!(placed_on(&d, j), Some(vec!["n3".to_string()]));
    let n3 = p.s.node("n3").unwrap();
    assert_eq!(n3.host_free().cpu_millicores, 28_000);
    assert_eq!(n3.host_free().memory_bytes, 240 * GIB);
    // Four such tasks more: n3 has one GPU left, so only one more fits
    // anywhere; nothing is over-committed in any dimension.
    let more: Vec<JobId> = (0..4)
        .map(|_| p.submit("zju", job(1, 4_000, 16 * GIB)))
        .collect();
    let d = p.round();
    let placed: Vec<JobId> = more
        .iter()
        .copied()
        .filter(|&id| placed_on(&d, id).is_some())
        .collect();
    assert_eq!(placed.len(), 1, "{d:?}");
    for n in p.s.nodes() {
        assert!(
            n.host_allocatable().holds(n.host_held),
            "{}: {:?}",
            n.name,
            n.host_held
        );
    }
    assert!(p.s.host_held_is_exact());
    // The last waiting job says which dimensions are short, and where.
    let why = p.explain(*more.last().unwrap());
    assert!(
        why.contains("GPUs: 1 of 3 nodes lacks")
            && why.contains("CPU: 1 of 3 nodes lacks 4 CPU cores free per task")
            && why.contains("memory: 1 of 3 nodes lacks 16 GiB free per task"),
        "{why}"
    );
}

#[test]
fn cpu_only_jobs_run_on_nodes_without_gpus_first_and_give_their_room_back() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "gpu", 2, "A100-80GB", 64_000, 512 * GIB);
    node(&mut p, "cpu", 0, "", 8_000, 32 * GIB);
    let a = p.submit("zju", job(0, 6_000, 8 * GIB));
    let d = p.round();
    assert_eq!(placed_on(&d, a), Some(vec!["cpu".to_string()]));
    assert_eq!(p.s.job(a).unwrap().gpu_class, None);
    // The CPU-only node is full: the next one goes to the GPU node.
    let b = p.submit("zju", job(0, 4_000, 4 * GIB));
    let d = p.round();
    assert_eq!(placed_on(&d, b), Some(vec!["gpu".to_string()]));
    // It ends: its CPU and memory are free again.
    p.exit(a, 0);
    let cpu = p.s.node("cpu").unwrap();
    assert_eq!(cpu.host_free().cpu_millicores, 8_000);
    assert!(p.s.host_held_is_exact());
    // Too big for any node's free CPU now: explain says CPU, and where.
    let c = p.submit("zju", job(0, 60_001, GIB));
    p.round();
    let why = p.explain(c);
    assert!(
        why.contains("CPU: 2 of 2 nodes lack 60001 CPU millicores free"),
        "{why}"
    );
    let _ = T0;
}

#[test]
fn submit_refuses_what_no_node_could_ever_hold_naming_the_field_and_the_largest_node() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "big", 2, "V100-32GB", 16_000, 128 * GIB);
    node(&mut p, "small", 1, "V100-16GB", 4_000, 32 * GIB);
    let refused = |p: &mut Pool, s: JobSpec| {
        p.s.apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: s,
            },
            T0,
        )
        .unwrap_err()
    };
    let err = refused(&mut p, job(1, 1_000, 200 * GIB));
    assert_eq!(
        err,
        Rejection::Infeasible(
            "memory_bytes: it asks for 200 GiB per task, more than any node has; the largest node (big) has 128 GiB allocatable".into()
        )
    );
    let err = refused(&mut p, job(1, 17_000, GIB));
    assert!(
        err.to_string()
            .contains("cpu_millicores: it asks for 17 CPU cores per task"),
        "{err}"
    );
    let mut s = job(1, 1_000, GIB);
    s.constraints.gpu_models = vec!["H100-80GB".into(), "V100-32GB".into()];
    let err = refused(&mut p, s);
    assert!(
        err.to_string().contains(
            "gpu_models: no node has GPUs of model H100-80GB (the pool has V100-16GB, V100-32GB)"
        ),
        "{err}"
    );
    // Big enough for the largest node, but not for one with its GPUs.
    let mut s = job(1, 10_000, GIB);
    s.constraints.gpu_models = vec!["V100-16GB".into()];
    let err = refused(&mut p, s);
    assert!(
        err.to_string().contains(
            "cpu_millicores: it asks for 10 CPU cores per task, but no node with 1 such GPUs has more than 4 CPU cores allocatable"
        ),
        "{err}"
    );
    assert_eq!(p.s.jobs().count(), 0);
    // A model set: either model will do.
    let mut s = job(1, 1_000, GIB);
    s.constraints.gpu_models = vec!["V100-16GB".into(), "V100-32GB".into()];
    let id = p.submit("zju", s);
    assert!(placed_on(&p.round(), id).is_some());
}

#[test]
fn old_entries_without_host_requests_still_place_on_nodes_that_report_none() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "old", 1, "A100-80GB", 0, 0);
    let id = p.submit("zju", job(1, 0, 0));
    assert_eq!(placed_on(&p.round(), id), Some(vec!["old".to_string()]));
    // One asking for CPU cannot go to a node that reports none.
    let err =
        p.s.apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: job(1, 1_000, 0),
            },
            T0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("cpu_millicores"), "{err}");
}
