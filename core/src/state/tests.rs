//! Exact effects of each command.

use super::tests_support::*;
use super::*;

fn place(s: &mut State, job: JobId, node_name: &str, gpus: Vec<String>) -> Applied {
    s.apply(
        Command::PlaceJob {
            job,
            tasks: vec![TaskPlacement {
                node: node_name.into(),
                gpus,
            }],
            capacity: Capacity::Guaranteed,
        },
        2_000,
    )
}

fn pool() -> State {
    let mut s = State::default();
    tenant(&mut s, "zju");
    tenant(&mut s, "hdu");
    node(&mut s, "n1", 4);
    s
}

#[test]
fn submit_assigns_ids_in_log_order_and_queues() {
    let mut s = pool();
    let (out, effects) = apply_ok(
        &mut s,
        Command::SubmitJob {
            tenant: "zju".into(),
            spec: spec(2, JobClass::Batch),
        },
    );
    assert_eq!(out, Outcome::Job(JobId(1)));
    assert_eq!(effects, vec![Effect::JobChanged(JobId(1))]);
    let job = s.job(JobId(1)).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.submitted_at, 1_000);
    assert_eq!(job.attempt, 1);
    assert_eq!(submit(&mut s, "hdu", 1, JobClass::Batch), JobId(2));
    assert_eq!(s.pending_jobs().count(), 2);
}

#[test]
fn submit_rejections_change_nothing() {
    let mut empty = State::default();
    tenant(&mut empty, "zju");
    let before = empty.clone();
    let cmd = |t: &str, g| Command::SubmitJob {
        tenant: t.into(),
        spec: spec(g, JobClass::Batch),
    };
    assert_eq!(empty.apply(cmd("zju", 1), 0), Err(Rejection::PoolEmpty));
    assert_eq!(empty, before);

    let mut s = pool();
    let before = s.clone();
    assert_eq!(
        s.apply(cmd("zju", 5), 0),
        Err(Rejection::NoNodeCanHold {
            requested: 5,
            largest: 4
        })
    );
    assert_eq!(
        s.apply(cmd("nobody", 1), 0),
        Err(Rejection::UnknownTenant("nobody".into()))
    );
    assert_eq!(s, before);
}

#[test]
fn too_much_gpu_memory_names_the_largest_there_is() {
    let mut s = pool();
    let before = s.clone();
    let mut want = spec(1, JobClass::Batch);
    want.constraints.min_gpu_memory_bytes = u64::MAX;
    let r = s.apply(
        Command::SubmitJob {
            tenant: "zju".into(),
            spec: want.clone(),
        },
        0,
    );
    assert_eq!(
        r,
        Err(Rejection::Infeasible(format!(
            "it asks for GPUs with at least {} bytes of memory, but no node has a GPU with more than 80 GiB",
            u64::MAX
        )))
    );
    want.constraints.min_gpu_memory_bytes = 96 << 30;
    want.constraints.gpu_model = Some("A100-80GB".into());
    let r = s.apply(
        Command::SubmitJob {
            tenant: "zju".into(),
            spec: want,
        },
        0,
    );
    assert_eq!(
        r,
        Err(Rejection::Infeasible(
            "it asks for GPUs with at least 96 GiB of memory, but no node has a GPU (model A100-80GB) with more than 80 GiB".into()
        ))
    );
    assert_eq!(s, before);
}

#[test]
fn create_tenant_twice_is_rejected() {
    let mut s = pool();
    let before = s.clone();
    let r = s.apply(
        Command::CreateTenant {
            name: "zju".into(),
            token_hash: "other".into(),
        },
        0,
    );
    assert_eq!(r, Err(Rejection::TenantExists("zju".into())));
    assert_eq!(s, before);
    assert_eq!(
        s.tenant_by_token_hash("hash-of-zju").as_deref(),
        Some("zju")
    );
    assert_eq!(s.tenant_by_token_hash("other"), None);
}

#[test]
fn place_emits_start_and_holds_gpus() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 2, JobClass::Batch);
    let (_, effects) = place(&mut s, j, "n1", vec![uuid("n1", 1), uuid("n1", 3)]).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::StartJob {
                node: "n1".into(),
                job: j
            },
            Effect::JobChanged(j)
        ]
    );
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Assigned);
    assert_eq!(job.nodes().collect::<Vec<_>>(), vec!["n1"]);
    assert_eq!(s.node("n1").unwrap().free_gpus().count(), 2);
    assert_eq!(s.pending_jobs().count(), 0);
}

#[test]
fn a_gpu_is_never_given_twice() {
    let mut s = pool();
    let a = submit(&mut s, "zju", 1, JobClass::Batch);
    let b = submit(&mut s, "hdu", 1, JobClass::Batch);
    place(&mut s, a, "n1", vec![uuid("n1", 0)]).unwrap();
    let before = s.clone();
    let r = place(&mut s, b, "n1", vec![uuid("n1", 0)]);
    assert_eq!(
        r,
        Err(Rejection::BadPlacement {
            job: b,
            node: "n1".into(),
            why: format!("GPU {} is held by {a}", uuid("n1", 0)),
        })
    );
    assert_eq!(s, before);
    // Placing the same job again is rejected too.
    assert!(matches!(
        place(&mut s, a, "n1", vec![uuid("n1", 1)]),
        Err(Rejection::NotPending { .. })
    ));
    // Wrong count and duplicates.
    assert!(place(&mut s, b, "n1", vec![uuid("n1", 1), uuid("n1", 2)]).is_err());
    let c = submit(&mut s, "hdu", 2, JobClass::Batch);
    assert!(place(&mut s, c, "n1", vec![uuid("n1", 1), uuid("n1", 1)]).is_err());
}

#[test]
fn start_then_exit_ends_the_job_and_frees_gpus() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 2, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0), uuid("n1", 1)]).unwrap();
    let (_, e) = s
        .apply(
            Command::JobStarted {
                node: "n1".into(),
                job: j,
                started_at: 3_000,
            },
            3_001,
        )
        .unwrap();
    assert_eq!(e, vec![Effect::JobChanged(j)]);
    assert_eq!(s.job(j).unwrap().state, JobState::Running);
    let (_, e) = s
        .apply(
            Command::JobExited {
                node: "n1".into(),
                job: j,
                exit_code: Some(0),
                reason: String::new(),
                finished_at: 9_000,
                usage: JobUsage::default(),
            },
            9_001,
        )
        .unwrap();
    assert_eq!(
        e,
        vec![
            Effect::ForgetJob {
                node: "n1".into(),
                job: j
            },
            Effect::JobChanged(j)
        ]
    );
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(
        (job.started_at, job.finished_at),
        (Some(3_000), Some(9_000))
    );
    assert_eq!(s.node("n1").unwrap().free_gpus().count(), 4);

    // A repeated report changes nothing but still lets the agent forget.
    let before = s.clone();
    let (out, e) = s
        .apply(
            Command::JobExited {
                node: "n1".into(),
                job: j,
                exit_code: Some(0),
                reason: String::new(),
                finished_at: 9_000,
                usage: JobUsage::default(),
            },
            9_500,
        )
        .unwrap();
    assert_eq!(out, Outcome::None);
    assert_eq!(
        e,
        vec![Effect::ForgetJob {
            node: "n1".into(),
            job: j
        }]
    );
    assert_eq!(s, before);
}

#[test]
fn nonzero_exit_is_failed_with_code() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    s.apply(
        Command::JobExited {
            node: "n1".into(),
            job: j,
            exit_code: Some(3),
            reason: String::new(),
            finished_at: 5,
            usage: JobUsage::default(),
        },
        5,
    )
    .unwrap();
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.reason, "exited with code 3");
}

#[test]
fn cancel_pending_running_and_finished() {
    let mut s = pool();
    let p = submit(&mut s, "zju", 1, JobClass::Batch);
    let (_, e) = s
        .apply(
            Command::CancelJob {
                tenant: Some("zju".into()),
                job: p,
                reason: String::new(),
            },
            7,
        )
        .unwrap();
    assert_eq!(e, vec![Effect::JobChanged(p)]);
    assert_eq!(s.job(p).unwrap().state, JobState::Cancelled);
    assert_eq!(s.pending_jobs().count(), 0);

    let r = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, r, "n1", vec![uuid("n1", 2)]).unwrap();
    // Another tenant cannot see it, let alone cancel it.
    let before = s.clone();
    assert_eq!(
        s.apply(
            Command::CancelJob {
                tenant: Some("hdu".into()),
                job: r,
                reason: String::new()
            },
            8
        ),
        Err(Rejection::UnknownJob(r))
    );
    assert_eq!(s, before);
    let (_, e) = s
        .apply(
            Command::CancelJob {
                tenant: None,
                job: r,
                reason: "maintenance".into(),
            },
            8,
        )
        .unwrap();
    assert_eq!(
        e,
        vec![
            Effect::StopJob {
                node: "n1".into(),
                job: r,
                grace_secs: 5,
                reason: "cancelled: maintenance".into()
            },
            Effect::JobChanged(r)
        ]
    );
    assert_eq!(s.job(r).unwrap().state, JobState::Cancelling);
    s.apply(
        Command::JobExited {
            node: "n1".into(),
            job: r,
            exit_code: None,
            reason: "terminated by signal 15".into(),
            finished_at: 9,
            usage: JobUsage::default(),
        },
        9,
    )
    .unwrap();
    assert_eq!(s.job(r).unwrap().state, JobState::Cancelled);
    assert_eq!(s.job(r).unwrap().reason, "cancelled: maintenance");
    assert!(matches!(
        s.apply(
            Command::CancelJob {
                tenant: None,
                job: r,
                reason: String::new()
            },
            10
        ),
        Err(Rejection::JobFinished { .. })
    ));
}

#[test]
fn node_loss_requeues_within_retries_then_loses() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch); // max_retries 1
    let f = s
        .apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: JobSpec {
                    on_node_lost: OnNodeLost::Fail,
                    ..spec(1, JobClass::Batch)
                },
            },
            1,
        )
        .map(|(o, _)| match o {
            Outcome::Job(id) => id,
            _ => unreachable!(),
        })
        .unwrap();
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    place(&mut s, f, "n1", vec![uuid("n1", 1)]).unwrap();
    apply_ok(&mut s, Command::NodeDisconnected { node: "n1".into() });
    assert_eq!(s.node("n1").unwrap().status, NodeStatus::Down);
    assert_eq!(
        s.job(j).unwrap().state,
        JobState::Assigned,
        "kept while down"
    );
    let (_, e) = apply_ok(&mut s, Command::NodeLost { node: "n1".into() });
    assert_eq!(e, vec![Effect::JobChanged(j), Effect::JobChanged(f)]);
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.reason, "node n1 was lost; requeued (attempt 2)");
    assert_eq!(s.job(f).unwrap().state, JobState::Lost);

    // The node comes back; the job runs again and is lost again: no retries left.
    node(&mut s, "n1", 4);
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    apply_ok(&mut s, Command::NodeDisconnected { node: "n1".into() });
    apply_ok(&mut s, Command::NodeLost { node: "n1".into() });
    assert_eq!(s.job(j).unwrap().state, JobState::Lost);
    assert_eq!(s.node("n1").unwrap().free_gpus().count(), 4);
}

#[test]
fn reconnect_before_loss_keeps_jobs() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    apply_ok(&mut s, Command::NodeDisconnected { node: "n1".into() });
    node(&mut s, "n1", 4);
    let (_, e) = apply_ok(&mut s, Command::NodeLost { node: "n1".into() });
    assert!(e.is_empty());
    assert_eq!(s.job(j).unwrap().state, JobState::Assigned);
    assert_eq!(
        s.node("n1").unwrap().gpus[0].holders.get(&j),
        Some(&WHOLE_GPU)
    );
}

#[test]
fn vanished_job_is_requeued() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    let (out, e) = apply_ok(
        &mut s,
        Command::JobVanished {
            node: "n1".into(),
            job: j,
            reason: "the agent no longer has it".into(),
        },
    );
    assert_eq!(out, Outcome::Job(j));
    assert_eq!(e, vec![Effect::JobChanged(j)]);
    assert_eq!(s.job(j).unwrap().state, JobState::Pending);
}

#[test]
fn same_log_same_state() {
    let run = || {
        let mut s = Indexed::new(pool());
        let a = submit(&mut s, "zju", 2, JobClass::Training);
        for d in crate::planner::plan(&s, 1_000, &Default::default()) {
            apply_ok(&mut s, d.into_command());
        }
        (a, serde_json::to_string(s.state()).unwrap())
    };
    assert_eq!(run(), run());
}

// ------------------------------------------------------------ GPU health

fn gpu_health(node: &str, gpu: &str, healthy: bool, reason: &str, by: Option<&str>) -> Command {
    Command::GpuHealthChanged {
        node: node.into(),
        gpu: gpu.into(),
        healthy,
        reason: reason.into(),
        cleared_by: by.map(Into::into),
    }
}

fn exited(job: JobId, exit_code: Option<i32>, at: Millis, usage: JobUsage) -> Command {
    Command::JobExited {
        node: "n1".into(),
        job,
        exit_code,
        reason: "stopped".into(),
        finished_at: at,
        usage,
    }
}

#[test]
fn failed_gpu_stops_its_job_and_leaves_placement() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 2, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0), uuid("n1", 1)]).unwrap();
    let (out, e) = s
        .apply(
            gpu_health(
                "n1",
                &uuid("n1", 1),
                false,
                "XID 79: GPU has fallen off the bus",
                None,
            ),
            5_000,
        )
        .unwrap();
    assert_eq!(out, Outcome::Node("n1".into()));
    let why = format!(
        "GPU {} on n1 failed: XID 79: GPU has fallen off the bus",
        uuid("n1", 1)
    );
    assert_eq!(
        e,
        vec![
            Effect::StopJob {
                node: "n1".into(),
                job: j,
                grace_secs: 5,
                reason: why.clone(),
            },
            Effect::JobChanged(j),
        ]
    );
    let gpu = &s.node("n1").unwrap().gpus[1];
    assert_eq!(
        gpu.fault,
        Some(GpuFault {
            reason: "XID 79: GPU has fallen off the bus".into(),
            since: 5_000,
            reset_seen: false,
        })
    );
    assert!(!gpu.info.healthy && !gpu.usable());
    let job = s.job(j).unwrap();
    assert_eq!(
        job.state,
        JobState::Assigned,
        "held until its process exits"
    );
    assert_eq!(job.gpu_fault.as_deref(), Some(why.as_str()));
    assert_eq!(job.reason, format!("{why}; stopping it to requeue"));

    // The same report again changes nothing and orders nothing.
    let before = s.clone();
    let (_, e) = s
        .apply(
            gpu_health(
                "n1",
                &uuid("n1", 1),
                false,
                "XID 79: GPU has fallen off the bus",
                None,
            ),
            6_000,
        )
        .unwrap();
    assert_eq!(e, vec![]);
    assert_eq!(s, before);
}

#[test]
fn job_stopped_for_a_failed_gpu_is_requeued_with_its_usage_and_avoids_the_gpu() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch); // max_retries 1
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    s.apply(
        Command::JobStarted {
            node: "n1".into(),
            job: j,
            started_at: 3_000,
        },
        3_000,
    )
    .unwrap();
    s.apply(
        gpu_health("n1", &uuid("n1", 0), false, "uncorrectable ECC error", None),
        4_000,
    )
    .unwrap();
    let used = JobUsage {
        gpu_ms: 1_500,
        energy_mj: 450_000,
    };
    let (out, e) = s.apply(exited(j, None, 4_500, used), 4_501).unwrap();
    assert_eq!(out, Outcome::Job(j));
    assert_eq!(
        e,
        vec![
            Effect::ForgetJob {
                node: "n1".into(),
                job: j
            },
            Effect::JobChanged(j),
        ]
    );
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempt, 2);
    assert!(job.tasks.iter().all(|t| t.finished), "its run is over");
    assert!(s.node("n1").unwrap().gpus[0].holders.is_empty());
    assert_eq!(job.gpu_fault, None);
    assert_eq!(job.usage, used, "the lost run's usage is kept");
    assert_eq!(
        job.reason,
        format!(
            "GPU {} on n1 failed: uncorrectable ECC error; requeued (attempt 2)",
            uuid("n1", 0)
        )
    );
    // The planner only sees the three healthy GPUs; placing on the failed
    // one is refused.
    let free: Vec<String> = s
        .node("n1")
        .unwrap()
        .free_gpus()
        .map(|g| g.info.uuid.clone())
        .collect();
    assert_eq!(free, vec![uuid("n1", 1), uuid("n1", 2), uuid("n1", 3)]);
    assert_eq!(
        place(&mut s, j, "n1", vec![uuid("n1", 0)]),
        Err(Rejection::BadPlacement {
            job: j,
            node: "n1".into(),
            why: format!("GPU {} is unhealthy", uuid("n1", 0)),
        })
    );
    place(&mut s, j, "n1", vec![uuid("n1", 1)]).unwrap();
    s.apply(
        exited(
            j,
            Some(0),
            9_000,
            JobUsage {
                gpu_ms: 2_000,
                energy_mj: 600_000,
            },
        ),
        9_000,
    )
    .unwrap();
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        job.usage,
        JobUsage {
            gpu_ms: 3_500,
            energy_mj: 1_050_000
        }
    );
}

#[test]
fn failed_gpu_job_without_retries_fails_and_one_that_finished_first_succeeds() {
    let mut s = pool();
    let j = s
        .apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: JobSpec {
                    on_node_lost: OnNodeLost::Fail,
                    ..spec(1, JobClass::Batch)
                },
            },
            1,
        )
        .map(|(o, _)| match o {
            Outcome::Job(id) => id,
            other => panic!("{other:?}"),
        })
        .unwrap();
    let k = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 0)]).unwrap();
    place(&mut s, k, "n1", vec![uuid("n1", 1)]).unwrap();
    s.apply(
        gpu_health(
            "n1",
            &uuid("n1", 0),
            false,
            "XID 48: double bit ECC error",
            None,
        ),
        2,
    )
    .unwrap();
    s.apply(
        gpu_health(
            "n1",
            &uuid("n1", 1),
            false,
            "XID 95: uncontained ECC error",
            None,
        ),
        2,
    )
    .unwrap();
    s.apply(exited(j, Some(137), 3, JobUsage::default()), 3)
        .unwrap();
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.exit_code, Some(137));
    assert_eq!(job.finished_at, Some(3));
    assert_eq!(
        job.reason,
        format!(
            "GPU {} on n1 failed: XID 48: double bit ECC error",
            uuid("n1", 0)
        )
    );
    // k ended on its own before the stop reached it: its result stands.
    s.apply(exited(k, Some(0), 3, JobUsage::default()), 3)
        .unwrap();
    assert_eq!(s.job(k).unwrap().state, JobState::Succeeded);
    assert_eq!(s.job(k).unwrap().gpu_fault, None);
}

#[test]
fn recovery_needs_a_reset_report_then_an_admin() {
    let mut s = pool();
    let g = uuid("n1", 2);
    assert_eq!(
        s.apply(gpu_health("n1", &g, true, "", Some("admin")), 1),
        Err(Rejection::GpuNotFaulty {
            node: "n1".into(),
            gpu: g.clone()
        })
    );
    s.apply(
        gpu_health("n1", &g, false, "XID 79: GPU has fallen off the bus", None),
        2,
    )
    .unwrap();
    // Not yet reset: the admin is refused and nothing changes.
    let before = s.clone();
    assert_eq!(
        s.apply(gpu_health("n1", &g, true, "", Some("admin")), 3),
        Err(Rejection::GpuNotReset {
            node: "n1".into(),
            gpu: g.clone(),
            reason: "XID 79: GPU has fallen off the bus".into(),
        })
    );
    assert_eq!(s, before);

    // The agent reports it healthy after a reset: still out of placement.
    let (_, e) = s.apply(gpu_health("n1", &g, true, "", None), 4).unwrap();
    assert_eq!(e, vec![]);
    let gpu = &s.node("n1").unwrap().gpus[2];
    assert!(gpu.info.healthy && !gpu.usable());
    assert!(gpu.fault.as_ref().unwrap().reset_seen);
    assert_eq!(s.node("n1").unwrap().free_gpus().count(), 3);

    // A reconnect does not clear it either, even with a clean inventory.
    s.apply(
        Command::NodeConnected {
            node: "n1".into(),
            gpus: gpus("n1", 4),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: 0,
            memory_bytes: 0,
        },
        5,
    )
    .unwrap();
    assert!(!s.node("n1").unwrap().gpus[2].usable());

    let (out, e) = s
        .apply(gpu_health("n1", &g, true, "", Some("admin")), 6)
        .unwrap();
    assert_eq!((out, e), (Outcome::Node("n1".into()), vec![]));
    assert!(s.node("n1").unwrap().gpus[2].usable());
    assert_eq!(s.node("n1").unwrap().free_gpus().count(), 4);

    assert_eq!(
        s.apply(gpu_health("n1", "GPU-nope", false, "x", None), 7),
        Err(Rejection::UnknownGpu {
            node: "n1".into(),
            gpu: "GPU-nope".into()
        })
    );
    assert_eq!(
        s.apply(gpu_health("n9", &g, false, "x", None), 7),
        Err(Rejection::UnknownNode("n9".into()))
    );
}

#[test]
fn unhealthy_gpu_in_a_hello_is_marked_and_its_job_stopped() {
    let mut s = pool();
    let j = submit(&mut s, "zju", 1, JobClass::Batch);
    place(&mut s, j, "n1", vec![uuid("n1", 3)]).unwrap();
    let mut inventory = gpus("n1", 4);
    inventory[3].healthy = false;
    inventory[3].health_reason = "2 uncorrectable ECC errors since the driver loaded".into();
    let (_, e) = s
        .apply(
            Command::NodeConnected {
                node: "n1".into(),
                gpus: inventory,
                agent_version: "test".into(),
                images: vec![],
                allows_host_jobs: true,
                cpu_millicores: 0,
                memory_bytes: 0,
            },
            8,
        )
        .unwrap();
    let why = format!(
        "GPU {} on n1 failed: 2 uncorrectable ECC errors since the driver loaded",
        uuid("n1", 3)
    );
    assert_eq!(
        e,
        vec![
            Effect::StopJob {
                node: "n1".into(),
                job: j,
                grace_secs: 5,
                reason: why,
            },
            Effect::JobChanged(j),
        ]
    );
    let fault = s.node("n1").unwrap().gpus[3].fault.clone().unwrap();
    assert_eq!((fault.since, fault.reset_seen), (8, false));
}

fn submit_spec(s: &mut State, spec: JobSpec) -> JobId {
    match apply_ok(
        s,
        Command::SubmitJob {
            tenant: "zju".into(),
            spec,
        },
    ) {
        (Outcome::Job(id), _) => id,
        other => panic!("unexpected {other:?}"),
    }
}

fn exited_on(node: &str, job: JobId, exit_code: Option<i32>, usage: JobUsage) -> Command {
    Command::JobExited {
        node: node.into(),
        job,
        exit_code,
        reason: "stopped".into(),
        finished_at: 5_000,
        usage,
    }
}

#[test]
fn failed_gpu_stops_every_task_of_a_gang_which_is_requeued_with_all_its_usage() {
    let mut s = pool();
    node(&mut s, "n2", 4);
    let j = submit_spec(
        &mut s,
        JobSpec {
            nodes: 2,
            ..spec(2, JobClass::Batch)
        },
    );
    s.apply(
        Command::PlaceJob {
            job: j,
            tasks: vec![
                TaskPlacement {
                    node: "n1".into(),
                    gpus: vec![uuid("n1", 0), uuid("n1", 1)],
                },
                TaskPlacement {
                    node: "n2".into(),
                    gpus: vec![uuid("n2", 0), uuid("n2", 1)],
                },
            ],
            capacity: Capacity::Guaranteed,
        },
        2_000,
    )
    .unwrap();
    for n in ["n1", "n2"] {
        s.apply(
            Command::JobStarted {
                node: n.into(),
                job: j,
                started_at: 3_000,
            },
            3_000,
        )
        .unwrap();
    }
    let (_, e) = s
        .apply(
            gpu_health("n2", &uuid("n2", 1), false, "XID 79", None),
            4_000,
        )
        .unwrap();
    let why = format!("GPU {} on n2 failed: XID 79", uuid("n2", 1));
    let stop = |node: &str| Effect::StopJob {
        node: node.into(),
        job: j,
        grace_secs: 5,
        reason: why.clone(),
    };
    assert_eq!(e, vec![stop("n1"), stop("n2"), Effect::JobChanged(j)]);

    let run = |gpu_ms| JobUsage {
        gpu_ms,
        energy_mj: 1_000,
    };
    let (_, e) = s
        .apply(exited_on("n1", j, None, run(4_000)), 5_000)
        .unwrap();
    // The first task's exit orders no second round of stops.
    assert_eq!(
        e,
        vec![Effect::ForgetJob {
            node: "n1".into(),
            job: j
        }]
    );
    assert_eq!(s.job(j).unwrap().state, JobState::Running);
    s.apply(exited_on("n2", j, None, run(4_000)), 5_000)
        .unwrap();
    let job = s.job(j).unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.gpu_fault, None);
    assert_eq!(job.reason, format!("{why}; requeued (attempt 2)"));
    assert_eq!(job.usage, run(4_000).plus(run(4_000)));
    assert_eq!(job.usage.energy_mj, 2_000, "summed over tasks");
}

#[test]
fn failed_gpu_stops_every_fractional_holder_and_keeps_the_holders_over_a_reconnect() {
    let mut s = pool();
    let half = || JobSpec {
        gpu_fraction: 500,
        ..spec(1, JobClass::Batch)
    };
    let a = submit_spec(&mut s, half());
    let b = submit_spec(&mut s, half());
    place(&mut s, a, "n1", vec![uuid("n1", 2)]).unwrap();
    place(&mut s, b, "n1", vec![uuid("n1", 2)]).unwrap();
    let (_, e) = s
        .apply(
            gpu_health("n1", &uuid("n1", 2), false, "XID 48", None),
            3_000,
        )
        .unwrap();
    let stopped: Vec<JobId> = e
        .iter()
        .filter_map(|e| match e {
            Effect::StopJob { job, .. } => Some(*job),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, vec![a, b]);
    // A reconnect while they stop keeps both the holders and the fault.
    s.apply(
        Command::NodeConnected {
            node: "n1".into(),
            gpus: gpus("n1", 4),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: 0,
            memory_bytes: 0,
        },
        3_500,
    )
    .unwrap();
    let gpu = &s.node("n1").unwrap().gpus[2];
    assert_eq!(gpu.holders.keys().copied().collect::<Vec<_>>(), vec![a, b]);
    assert!(gpu.fault.as_ref().is_some_and(|f| f.reset_seen));
    assert_eq!((gpu.free_milli(), gpu.is_free()), (0, false));
    // One finished on its own before the stop reached it: it succeeds.
    s.apply(exited(a, Some(0), 4_000, JobUsage::default()), 4_000)
        .unwrap();
    s.apply(exited(b, None, 4_000, JobUsage::default()), 4_000)
        .unwrap();
    assert_eq!(s.job(a).unwrap().state, JobState::Succeeded);
    assert_eq!(s.job(b).unwrap().state, JobState::Pending);
    assert!(s.node("n1").unwrap().gpus[2].holders.is_empty());
    assert!(!s.node("n1").unwrap().gpus[2].usable());
}

#[test]
fn final_jobs_beyond_the_kept_number_are_archived_into_tenant_totals() {
    let mut s = pool();
    s.policy.final_jobs_kept = 2;
    let ids: Vec<JobId> = (0..4)
        .map(|_| submit(&mut s, "zju", 1, JobClass::Training))
        .collect();
    let live = submit(&mut s, "hdu", 1, JobClass::Training);
    for (k, id) in ids.iter().enumerate() {
        place(&mut s, *id, "n1", vec![uuid("n1", 0)]).unwrap();
        apply_ok(
            &mut s,
            Command::JobExited {
                node: "n1".into(),
                job: *id,
                exit_code: Some(k as i32 % 2),
                reason: String::new(),
                finished_at: 3_000,
                usage: JobUsage {
                    gpu_ms: 1_000,
                    energy_mj: 5,
                },
            },
        );
    }
    // The two oldest final jobs are gone, their runs summed; the two
    // newest are kept in full, and the pending job is untouched.
    assert!(s.job(ids[0]).is_none() && s.job(ids[1]).is_none());
    assert!(s.job(ids[2]).is_some() && s.job(ids[3]).is_some());
    assert_eq!(s.job(live).unwrap().state, JobState::Pending);
    let a = s.archived("zju");
    assert_eq!((a.jobs, a.succeeded, a.failed), (2, 1, 1));
    assert_eq!(a.usage.gpu_ms, 2_000);
    assert_eq!(s.archived("hdu"), Archived::default());
    // A replica loading a snapshot of this state ends equal, indexes too.
    let loaded: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(loaded, s);
}

#[test]
fn an_array_submits_consecutive_jobs_told_their_index_or_none() {
    let mut s = pool();
    let mut one = spec(1, JobClass::Batch);
    one.env.insert("DATA".into(), "shard".into());
    let (out, effects) = apply_ok(
        &mut s,
        Command::SubmitArray {
            tenant: "zju".into(),
            spec: one.clone(),
            count: 3,
        },
    );
    assert_eq!(
        out,
        Outcome::Jobs {
            first: JobId(1),
            count: 3
        }
    );
    assert_eq!(
        effects,
        (1..=3)
            .map(|i| Effect::JobChanged(JobId(i)))
            .collect::<Vec<_>>()
    );
    for (index, id) in (1..=3).map(JobId).enumerate() {
        let j = s.job(id).unwrap();
        assert_eq!(j.state, JobState::Pending);
        let env = &j.spec.env;
        assert_eq!(env[ARRAY_INDEX_ENV], index.to_string());
        assert_eq!(env[ARRAY_SIZE_ENV], "3");
        assert_eq!(env[ARRAY_JOB_ID_ENV], "j-1");
        assert_eq!(env["DATA"], "shard", "the spec's own environment is kept");
    }
    assert_eq!(s.queues().pending_of("zju"), 3);

    // What refuses one job refuses the array, and changes nothing.
    let before = s.clone();
    let too_wide = spec(8, JobClass::Batch);
    for (tenant, spec, count) in [
        ("zju", one.clone(), 0),
        ("zju", one.clone(), MAX_ARRAY + 1),
        ("nope", one.clone(), 2),
        ("zju", too_wide, 2),
    ] {
        let refused = s.apply(
            Command::SubmitArray {
                tenant: tenant.into(),
                spec,
                count,
            },
            1_000,
        );
        assert!(refused.is_err(), "{tenant} x{count} was accepted");
        assert_eq!(s, before);
    }
}
