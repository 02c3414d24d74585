//! Hand-made traces whose figures are worked out by hand.

use super::replay::{replay, Member, Params, Setup, TraceJob};
use super::*;

const T0: Millis = 1_506_816_000_000; // 2017-10-01 00:00:00

fn params() -> Params {
    Params {
        checkpoint_ms: 4_000,
        restart_delay_ms: 5_000,
        walltime_secs: 3600,
        bucket_ms: 10_000,
    }
}

fn job(tenant: usize, submit_s: i64, gpus: u32, duration_s: i64) -> TraceJob {
    TraceJob {
        tenant,
        submit: T0 + submit_s * 1000,
        duration: duration_s * 1000,
        gpus,
    }
}

fn two_members() -> Workload {
    Workload {
        vcs: vec![
            PhillyVc {
                vc: "a".into(),
                nodes: 1,
            },
            PhillyVc {
                vc: "b".into(),
                nodes: 1,
            },
        ],
        // a: a whole node at 0 for 100 s and another at 10 for 50 s;
        // b: half a node at 20 for 30 s.
        jobs: vec![job(0, 0, 8, 100), job(0, 10, 8, 50), job(1, 20, 4, 30)],
        other_vcs: 0,
    }
}

fn modes() -> Vec<Mode> {
    vec![Mode::PartitionedFifo, Mode::PooledFifo, Mode::Edupool]
}

fn secs(o: &replay::JobOutcome) -> (i64, i64) {
    (o.jct_ms().unwrap() / 1000, o.queued_ms / 1000)
}

#[test]
fn partitioned_fifo_runs_each_member_alone_in_order() {
    let w = two_members();
    let m = members(&w.vcs, 1.0);
    let run = run_mode(&m, &w.jobs, Mode::PartitionedFifo, &params(), &|| {});
    // a's second job waits for its first (10 s -> 100 s); b runs at once.
    let got: Vec<(i64, i64)> = run.jobs.iter().map(secs).collect();
    assert_eq!(got, vec![(100, 0), (140, 90), (30, 0)]);
    assert_eq!((run.rejected, run.refused), (0, 0));
}

#[test]
fn pooled_fifo_shares_every_node_and_can_leave_a_member_worse_off() {
    let w = two_members();
    let m = members(&w.vcs, 1.0);
    let run = run_mode(&m, &w.jobs, Mode::PooledFifo, &params(), &|| {});
    // a's second job takes b's idle node at 10 s; b's job then waits for
    // it to end at 60 s.
    let got: Vec<(i64, i64)> = run.jobs.iter().map(secs).collect();
    assert_eq!(got, vec![(100, 0), (50, 0), (70, 40)]);
    assert_eq!(run.reclaim_ms, Vec::<Millis>::new());
}

#[test]
fn edupool_reclaims_a_guarantee_and_the_borrower_loses_work_since_its_checkpoint() {
    let w = two_members();
    let m = members(&w.vcs, 1.0);
    let run = run_mode(&m, &w.jobs, Mode::Edupool, &params(), &|| {});
    // a's second job borrows b's node at 10 s; b claims it back at 20 s:
    // the borrower ran 10 s, kept 8 s (checkpoints every 4 s), lost 2 s.
    // It runs again when b's job ends at 50 s, pays the 5 s restart delay
    // and its 42 s left: it ends at 97 s (JCT 87 s, queued 30 s).
    let got: Vec<(i64, i64)> = run.jobs.iter().map(secs).collect();
    assert_eq!(got, vec![(100, 0), (87, 30), (30, 0)]);
    assert_eq!(run.jobs[1].preemptions, 1);
    // 8 GPUs x (2 s lost + 5 s restart delay).
    assert_eq!(run.jobs[1].lost_gpu_ms, 8 * 7_000);
    // b's guaranteed demand got its GPUs at the instant it arrived.
    assert_eq!(run.reclaim_ms, vec![0]);
    assert_eq!((run.rejected, run.refused), (0, 0));
}

#[test]
fn the_report_has_utilisation_ratios_and_fairness_worked_out_by_hand() {
    let w = two_members();
    let s = run_scale(&w, 1.0, &modes(), &params(), &|| {});
    assert_eq!((s.nodes, s.gpus, s.jobs, s.too_large_alone), (2, 16, 3, 0));
    let p = |mode: Mode| s.policies.iter().find(|p| p.policy == mode).unwrap();
    let (part, pooled, edu) = (
        p(Mode::PartitionedFifo),
        p(Mode::PooledFifo),
        p(Mode::Edupool),
    );
    // GPU-seconds held / (16 GPUs x makespan).
    assert_eq!(part.makespan_s, 150.0);
    assert!((part.utilisation - 1320.0 / 2400.0).abs() < 1e-9);
    assert_eq!(pooled.makespan_s, 100.0);
    assert!((pooled.utilisation - 1320.0 / 1600.0).abs() < 1e-9);
    // 800 + 8 x (10 + 47) + 120: the restart delay holds GPUs too.
    assert!((edu.utilisation - 1376.0 / 1600.0).abs() < 1e-9);
    assert_eq!(edu.jct_s.avg, (100.0 + 87.0 + 30.0) / 3.0);
    assert_eq!(edu.jct_s.median, 87.0);
    assert_eq!(edu.jct_s.p99, 100.0);
    assert_eq!(pooled.queueing_s.avg, 40.0 / 3.0);
    assert_eq!((edu.preemptions, edu.reclaims), (1, 1));
    assert!((edu.gpu_hours_lost - 56.0 / 3600.0).abs() < 1e-12);
    assert_eq!(edu.reclaim_p99_s, Some(0.0));
    // a: 120 s alone; b: 30 s alone.
    let ratios =
        |p: &PolicyResult| -> Vec<f64> { p.tenants.iter().map(|t| t.jct_ratio.unwrap()).collect() };
    assert_eq!(ratios(part), vec![1.0, 1.0]);
    assert_eq!(ratios(pooled), vec![75.0 / 120.0, 70.0 / 30.0]);
    assert_eq!(ratios(edu), vec![93.5 / 120.0, 1.0]);
    assert_eq!(part.jain, 1.0);
    let speedups = [120.0 / 75.0, 30.0 / 70.0];
    assert!((pooled.jain - jain(&speedups)).abs() < 1e-12);
    assert!(edu.jain > pooled.jain);
    let table = AllianceReport {
        from: "2017-10-01 00:00:00".into(),
        to: "2017-10-01 00:01:00".into(),
        members: 2,
        other_vc_jobs: 0,
        checkpoint_interval_s: 4,
        restart_delay_s: 5,
        walltime_s: 3600,
        scales: vec![s.clone()],
        wall_seconds: 0.0,
        jobs_per_second: 0.0,
    };
    assert!(
        table
            .table()
            .contains("worse off than alone under pooled-fifo: b (2.33)"),
        "{}",
        table.table()
    );
    assert_eq!(table.charts().len(), 4);
}

#[test]
fn a_gang_above_one_node_takes_whole_nodes_and_holds_all_their_gpus() {
    let j = job(0, 0, 12, 10);
    assert_eq!((j.shape(), j.held()), ((2, 8), 16));
    let m = vec![Member {
        name: "a".into(),
        nodes: 2,
    }];
    let setup = Setup {
        owners: true,
        order: QueueOrder::FairShare,
        origin: T0,
    };
    let run = replay(&m, &[j, job(0, 1, 1, 10)], setup, &params(), &|| {});
    // The one-GPU job waits for the gang to free a node.
    let got: Vec<(i64, i64)> = run.jobs.iter().map(secs).collect();
    assert_eq!(got, vec![(10, 0), (19, 9)]);
    // 16 GPUs for 10 s, then 1 GPU for 10 s, in buckets of 10 s.
    assert_eq!(run.busy, vec![160_000.0 + 0.0, 10_000.0]);
}

#[test]
fn jobs_larger_than_their_member_alone_are_left_out_of_every_policy() {
    let mut w = two_members();
    w.jobs.push(job(1, 30, 16, 10));
    let s = run_scale(&w, 1.0, &modes(), &params(), &|| {});
    assert_eq!((s.jobs, s.too_large_alone), (3, 1));
    assert!(s.policies.iter().all(|p| p.jobs == 3));
}

/// A pseudo-random workload from a seed (a linear congruential generator,
/// so the test needs no RNG crate and the trace is the same everywhere).
fn synthetic(seed: u64, n: usize) -> Workload {
    let mut x = seed;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % m
    };
    let sizes = [1, 1, 1, 2, 4, 8, 16];
    let jobs = (0..n)
        .map(|_| {
            job(
                next(3) as usize,
                next(2 * 3600) as i64,
                sizes[next(sizes.len() as u64) as usize],
                1 + next(3 * 3600) as i64,
            )
        })
        .collect();
    Workload {
        vcs: ["a", "b", "c"]
            .iter()
            .zip([4, 2, 1])
            .map(|(v, nodes)| PhillyVc {
                vc: v.to_string(),
                nodes,
            })
            .collect(),
        jobs,
        other_vcs: 0,
    }
}

#[test]
fn a_replay_is_deterministic_for_a_seed() {
    let w = synthetic(7, 60);
    let p = Params {
        checkpoint_ms: 900_000,
        restart_delay_ms: 60_000,
        walltime_secs: 86_400,
        bucket_ms: 3_600_000,
    };
    let strip = |mut s: ScaleResult| {
        for p in &mut s.policies {
            p.wall_s = 0.0;
        }
        s
    };
    let a = strip(run_scale(&w, 0.5, &modes(), &p, &|| {}));
    let b = strip(run_scale(&w, 0.5, &modes(), &p, &|| {}));
    assert_eq!(a, b);
    // Contended enough that the policies differ and edupool preempts.
    let edu = a
        .policies
        .iter()
        .find(|p| p.policy == Mode::Edupool)
        .unwrap();
    assert!(edu.preemptions > 0, "{edu:?}");
    for p in &a.policies {
        assert_eq!(p.jobs, a.jobs, "every job finishes under {:?}", p.policy);
        assert_eq!(p.rejected_decisions, 0);
    }
    let other = strip(run_scale(&synthetic(8, 60), 0.5, &modes(), &p, &|| {}));
    assert_ne!(a, other);
}

#[test]
fn the_window_and_the_member_list_select_the_jobs() {
    let at = |s: &str| parse_datetime(s).unwrap();
    let trace = vec![
        PhillyJob {
            submit: at("2017-09-30 23:59:59"),
            duration: 5.0,
            gpus: 1,
            vc: "a".into(),
        },
        PhillyJob {
            submit: at("2017-10-01 00:00:10"),
            duration: 2.5,
            gpus: 2,
            vc: "b".into(),
        },
        PhillyJob {
            submit: at("2017-10-01 00:00:00"),
            duration: 1.0,
            gpus: 1,
            vc: "zz".into(),
        },
        PhillyJob {
            submit: at("2017-10-01 00:00:00"),
            duration: 1.0,
            gpus: 4,
            vc: "a".into(),
        },
    ];
    let w = workload(
        &trace,
        &two_members().vcs,
        at("2017-10-01 00:00:00"),
        at("2017-11-30 23:59:59"),
    );
    assert_eq!(w.other_vcs, 1);
    assert_eq!(
        w.jobs,
        vec![
            TraceJob {
                tenant: 0,
                submit: T0,
                duration: 1000,
                gpus: 4
            },
            TraceJob {
                tenant: 1,
                submit: T0 + 10_000,
                duration: 2500,
                gpus: 2
            },
        ]
    );
    let m = members(
        &[PhillyVc {
            vc: "x".into(),
            nodes: 8,
        }],
        0.35,
    );
    assert_eq!(m[0].nodes, 3, "round(8 x 0.35) = round(2.8)");
}

#[test]
fn the_report_tables_right_align_their_numbers() {
    let w = two_members();
    let s = run_scale(&w, 1.0, &modes(), &params(), &|| {});
    assert_eq!(
        member_table(&s.policies),
        "  member  GPUs  jobs  partitioned-fifo    pooled-fifo        edupool\n\
         \x20 a          8     2     0.03 h (1.00)  0.02 h (0.62)  0.03 h (0.78)\n\
         \x20 b          8     1     0.01 h (1.00)  0.02 h (2.33)  0.01 h (1.00)\n"
    );
    let policies = policy_table(&s.policies);
    let lines: Vec<&str> = policies.lines().collect();
    assert_eq!(lines.len(), 4, "{policies}");
    // Every column right-aligned but the first: every line ends at the
    // same place.
    assert!(
        lines.iter().all(|l| l.len() == lines[0].len()),
        "{policies}"
    );
    assert!(
        lines[0].starts_with("  policy            JCT avg"),
        "{policies}"
    );
    assert!(lines[3].starts_with("  edupool  "), "{policies}");
    assert!(
        lines[3].ends_with("  86.0%  0.985        1         0.0     0.00 h"),
        "{policies}"
    );
    assert_eq!(member_table(&[]), "  member  GPUs  jobs\n");
}
