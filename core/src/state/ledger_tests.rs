//! The ledger, the price book and budgets: exact totals, piecewise
//! pricing, rejections that change nothing, and the worked example of
//! docs/accounting.md.

use super::billing::{self, days_from_civil, GroupBy, Period};
use super::tests_support::*;
use super::*;

const HOUR: Millis = 3_600_000;

fn ok(s: &mut State, cmd: Command, at: Millis) -> Outcome {
    s.apply(cmd.clone(), at)
        .unwrap_or_else(|e| panic!("{cmd:?} rejected: {e}"))
        .0
}

fn submit_at(s: &mut State, tenant: &str, spec: JobSpec, at: Millis) -> JobId {
    match ok(
        s,
        Command::SubmitJob {
            tenant: tenant.into(),
            spec,
        },
        at,
    ) {
        Outcome::Job(id) => id,
        other => panic!("unexpected {other:?}"),
    }
}

/// Places the job on `node`'s first GPUs and reports it started.
fn run_on(s: &mut State, job: JobId, node: &str, capacity: Capacity, start: Millis) {
    let n = s.job(job).unwrap().spec.gpus;
    let gpus = (0..n).map(|i| uuid(node, i)).collect();
    ok(
        s,
        Command::PlaceJob {
            job,
            tasks: vec![TaskPlacement {
                node: node.into(),
                gpus,
            }],
            capacity,
        },
        start,
    );
    ok(
        s,
        Command::JobStarted {
            node: node.into(),
            job,
            started_at: start,
        },
        start,
    );
}

fn exit(s: &mut State, job: JobId, node: &str, code: i32, end: Millis, energy_mj: u64) {
    ok(
        s,
        Command::JobExited {
            node: node.into(),
            job,
            exit_code: Some(code),
            reason: String::new(),
            finished_at: end,
            usage: JobUsage {
                gpu_ms: 0,
                energy_mj,
            },
        },
        end,
    );
}

fn label(s: &mut State, node: &str, owner: &str) {
    ok(
        s,
        Command::LabelNode {
            node: node.into(),
            labels: NodeLabels {
                owner: Some(owner.into()),
                ..NodeLabels::default()
            },
        },
        1_000,
    );
}

fn fraction(milli: u32, class: JobClass) -> JobSpec {
    JobSpec {
        gpu_fraction: milli,
        ..spec(1, class)
    }
}

#[test]
fn ledger_totals_equal_run_times_times_gpus_over_preemption_requeue_fractions_and_loss() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    node(&mut s, "n2", 2);

    // Two GPUs: preempted after 65 s, requeued, then runs 100 s more.
    let a = submit_at(&mut s, "zju", spec(2, JobClass::Training), 0);
    run_on(&mut s, a, "n1", Capacity::Borrowed, 10_000);
    ok(
        &mut s,
        Command::PreemptJob {
            job: a,
            reason: "reclaimed".into(),
            for_job: None,
        },
        70_000,
    );
    exit(&mut s, a, "n1", 143, 75_000, 0);
    assert_eq!(s.job(a).unwrap().state, JobState::Pending, "requeued");
    run_on(&mut s, a, "n1", Capacity::Guaranteed, 100_000);
    exit(&mut s, a, "n1", 0, 200_000, 5_000);

    // A quarter GPU for 40 s.
    let b = submit_at(&mut s, "zju", fraction(250, JobClass::Batch), 0);
    run_on(&mut s, b, "n2", Capacity::Guaranteed, 20_000);
    exit(&mut s, b, "n2", 0, 60_000, 0);

    // One GPU on n2 from 50 s until the node is declared lost at 300 s.
    let c = submit_at(&mut s, "zju", spec(1, JobClass::Batch), 0);
    let gpus = vec![uuid("n2", 1)];
    ok(
        &mut s,
        Command::PlaceJob {
            job: c,
            tasks: vec![TaskPlacement {
                node: "n2".into(),
                gpus,
            }],
            capacity: Capacity::Guaranteed,
        },
        50_000,
    );
    ok(
        &mut s,
        Command::JobStarted {
            node: "n2".into(),
            job: c,
            started_at: 50_000,
        },
        50_000,
    );
    ok(
        &mut s,
        Command::NodeDisconnected { node: "n2".into() },
        250_000,
    );
    ok(&mut s, Command::NodeLost { node: "n2".into() }, 300_000);

    let entries = &s.accounts().entries;
    let ended: Vec<(JobId, u32, RunEnd, u64)> = entries
        .iter()
        .map(|e| (e.job, e.run, e.ended, e.gpu_milli_ms))
        .collect();
    assert_eq!(
        ended,
        vec![
            (a, 1, RunEnd::Preempted, 65_000 * 2 * 1000),
            (a, 2, RunEnd::Completed, 100_000 * 2 * 1000),
            (b, 1, RunEnd::Completed, 40_000 * 250),
            (c, 1, RunEnd::Lost, 250_000 * 1000),
        ]
    );
    let total: u64 = entries.iter().map(|e| e.gpu_milli_ms).sum();
    assert_eq!(total, 130_000_000 + 200_000_000 + 10_000_000 + 250_000_000);
    assert_eq!(entries[0].capacity, Capacity::Borrowed);
    assert_eq!(entries[1].energy_mj, Some(5_000));
    assert_eq!(entries[0].energy_mj, None, "nothing measured");
    assert_eq!(entries[2].milli_per_gpu, 250);
    assert_eq!(entries[3].gpu_model, "A100-80GB");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);

    // Entries are only appended: later commands leave earlier ones as they were.
    let before = entries.clone();
    node(&mut s, "n2", 2);
    let d = submit_at(&mut s, "zju", spec(1, JobClass::Batch), 400_000);
    ok(
        &mut s,
        Command::CancelJob {
            tenant: None,
            job: d,
            reason: String::new(),
        },
        400_001,
    );
    assert!(s.accounts().entries.range(..4).eq(before.iter()));

    // The ledger survives a snapshot round trip exactly.
    let json = serde_json::to_string(&s).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_gang_records_one_entry_per_task_with_its_lender() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    tenant(&mut s, "hdu");
    node(&mut s, "n1", 2);
    node(&mut s, "n2", 2);
    label(&mut s, "n1", "zju");
    label(&mut s, "n2", "hdu");
    let j = submit_at(
        &mut s,
        "zju",
        JobSpec {
            nodes: 2,
            ..spec(2, JobClass::Training)
        },
        0,
    );
    let task = |n: &str| TaskPlacement {
        node: n.into(),
        gpus: vec![uuid(n, 0), uuid(n, 1)],
    };
    ok(
        &mut s,
        Command::PlaceJob {
            job: j,
            tasks: vec![task("n1"), task("n2")],
            capacity: Capacity::Borrowed,
        },
        0,
    );
    for n in ["n1", "n2"] {
        ok(
            &mut s,
            Command::JobStarted {
                node: n.into(),
                job: j,
                started_at: 1_000,
            },
            1_000,
        );
    }
    exit(&mut s, j, "n1", 0, 11_000, 0);
    exit(&mut s, j, "n2", 0, 21_000, 0);
    let e = &s.accounts().entries;
    assert_eq!(e.len(), 2);
    assert_eq!((e[0].task, e[0].lender.as_deref()), (0, None));
    assert_eq!((e[1].task, e[1].lender.as_deref()), (1, Some("hdu")));
    assert_eq!(e[0].gpu_milli_ms, 10_000 * 2000);
    assert_eq!(e[1].gpu_milli_ms, 20_000 * 2000);
}

fn prices(currency: Option<&str>, model: &str, per_hour: Money, from: Millis) -> Command {
    Command::SetPrices(PriceChange {
        effective_from: Some(from),
        currency: currency.map(Into::into),
        gpu_hour: vec![GpuPrice {
            model: model.into(),
            class: None,
            per_gpu_hour: per_hour,
        }],
        ..PriceChange::default()
    })
}

#[test]
fn a_run_spanning_a_price_change_is_priced_piecewise() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    ok(&mut s, prices(Some("CNY"), "A100-80GB", 10_000, HOUR), 0);
    ok(
        &mut s,
        Command::SetPrices(PriceChange {
            effective_from: Some(2 * HOUR),
            gpu_hour: vec![GpuPrice {
                model: "A100-80GB".into(),
                class: None,
                per_gpu_hour: 20_000,
            }],
            energy_per_kwh: Some(1_000),
            ..PriceChange::default()
        }),
        0,
    );
    // 3 GPUs from 0:30 to 2:30: half an hour unpriced, an hour at 10, half
    // an hour at 20.
    let j = submit_at(&mut s, "zju", spec(3, JobClass::Training), 0);
    run_on(&mut s, j, "n1", Capacity::Guaranteed, HOUR / 2);
    // 4 kWh, spread evenly: the last quarter of the run at 1.000/kWh.
    exit(&mut s, j, "n1", 0, 5 * HOUR / 2, 4 * 3_600_000_000);
    let lines = billing::bill(s.accounts(), Some("zju"), 0, 3 * HOUR).unwrap();
    assert_eq!(lines.runs.len(), 1);
    let c = lines.runs[0].charge;
    assert_eq!(c.gpu, 3 * 10_000 + 3 * 10_000);
    assert_eq!(c.energy, 1_000);
    assert_eq!(c.unpriced_gpu_milli_ms, (HOUR as u64 / 2) * 3000);
    assert_eq!(c.net(), 61_000);
}

#[test]
fn bad_price_and_budget_input_is_rejected_and_changes_nothing() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 1);
    let fresh = s.clone();
    let cases = [
        (
            prices(Some("CNY"), "H100-80GB", 1, 10),
            "no node in the pool has GPU model 'H100-80GB'",
        ),
        (
            prices(None, "A100-80GB", 1, 10),
            "the first price version must name its currency",
        ),
        (
            prices(Some("yuan"), "A100-80GB", 1, 10),
            "'yuan' is not a currency code",
        ),
        (
            prices(Some("CNY"), "A100-80GB", 1, 5),
            "prices cannot change retroactively",
        ),
        (
            Command::SetPrices(PriceChange {
                currency: Some("CNY".into()),
                lending_credit_pct: Some(101),
                ..PriceChange::default()
            }),
            "a lending credit of 101% is not a percentage",
        ),
        (
            Command::SetBudget {
                tenant: "zju".into(),
                budget: Some(Budget {
                    period: Period::Month,
                    soft: Some(2_000),
                    hard: Some(1_000),
                }),
            },
            "the soft limit (2.000) is above the hard limit (1.000)",
        ),
        (
            Command::SetBudget {
                tenant: "nobody".into(),
                budget: None,
            },
            "tenant 'nobody' does not exist",
        ),
    ];
    for (cmd, want) in cases {
        let err = s.apply(cmd.clone(), 10).expect_err("rejected").to_string();
        assert!(err.contains(want), "{cmd:?}: {err}");
        assert_eq!(s, fresh, "{cmd:?} changed the state");
    }
    ok(&mut s, prices(Some("CNY"), "A100-80GB", 1, 100), 10);
    let set = s.clone();
    for (cmd, want) in [
        (
            prices(Some("EUR"), "A100-80GB", 1, 200),
            "the currency is CNY; it cannot change to EUR",
        ),
        (
            prices(None, "A100-80GB", 2, 100),
            "version 1 already takes effect at 1970-01-01T00:00:00.100Z",
        ),
    ] {
        let err = s.apply(cmd, 20).expect_err("rejected").to_string();
        assert!(err.contains(want), "{err}");
        assert_eq!(s, set);
    }
}

#[test]
fn a_hard_budget_stops_new_non_scavenger_jobs_until_the_next_period() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 2);
    ok(&mut s, prices(Some("CNY"), "A100-80GB", 10_000, 0), 0);
    ok(
        &mut s,
        Command::SetBudget {
            tenant: "zju".into(),
            budget: Some(Budget {
                period: Period::Day,
                soft: Some(5_000),
                hard: Some(15_000),
            }),
        },
        0,
    );
    // Two GPU-hours: 20.000 of a 15.000 hard budget.
    let j = submit_at(&mut s, "zju", spec(2, JobClass::Training), 0);
    run_on(&mut s, j, "n1", Capacity::Guaranteed, 0);
    exit(&mut s, j, "n1", 0, HOUR, 0);
    let status = billing::budget_status(s.accounts(), "zju", &s.accounts().budgets["zju"], HOUR);
    assert_eq!(status.used, 20_000);
    assert!(status.over_soft() && status.over_hard());
    let before = s.clone();
    let err = s
        .apply(
            Command::SubmitJob {
                tenant: "zju".into(),
                spec: spec(1, JobClass::Batch),
            },
            2 * HOUR,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant 'zju' is over its hard budget for 1970-01-01: 20.000 CNY used of 15.000 CNY; \
         only scavenger jobs are accepted until the period ends or an admin raises the budget"
    );
    assert_eq!(s, before);
    submit_at(&mut s, "zju", spec(1, JobClass::Scavenger), 2 * HOUR);
    // A new day, a new budget.
    submit_at(&mut s, "zju", spec(1, JobClass::Batch), 24 * HOUR);
}

#[test]
fn periods_follow_the_calendar() {
    let nov25 = days_from_civil(2026, 11, 25) * 24 * HOUR + 5 * HOUR;
    assert_eq!(Period::Month.label(nov25), "2026-11");
    assert_eq!(Period::Week.label(nov25), "week of 2026-11-23");
    assert_eq!(Period::Day.label(nov25), "2026-11-25");
    let dec = Period::Month.next(Period::Month.start(nov25));
    assert_eq!(billing::format_time(dec), "2026-12-01T00:00:00Z");
    let jan = Period::Month.next(dec);
    assert_eq!(billing::format_time(jan), "2027-01-01T00:00:00Z");
    // The far future and past saturate instead of overflowing.
    assert!(Period::Month.start(Millis::MAX) > 0);
    assert!(Period::Month.next(Period::Month.start(Millis::MAX)) > 0);
    assert!(Period::Week.start(Millis::MIN) < 0);
}

/// The first price version of the worked example, in force from `from`:
/// 8.000 a GPU-hour (6.000 for batch), 0.800 a kWh, one free GPU-hour a
/// month, 20 % off for uni-b, 70 % of the GPU charge credited to lenders.
fn alliance_prices(from: Millis) -> Command {
    Command::SetPrices(PriceChange {
        effective_from: Some(from),
        currency: Some("CNY".into()),
        gpu_hour: vec![
            GpuPrice {
                model: "A100-80GB".into(),
                class: None,
                per_gpu_hour: 8_000,
            },
            GpuPrice {
                model: "A100-80GB".into(),
                class: Some(JobClass::Batch),
                per_gpu_hour: 6_000,
            },
        ],
        energy_per_kwh: Some(800),
        free_milli_gpu_hours: Some(1_000),
        equity_discount_pct: [("uni-b".to_string(), 20)].into(),
        lending_credit_pct: Some(70),
    })
}

/// The worked example of docs/accounting.md, number for number.
#[test]
fn worked_example_of_the_accounting_docs() {
    let day = |d: u32, h: i64| days_from_civil(2026, 11, d) * 24 * HOUR + h * HOUR;
    let mut s = State::default();
    tenant(&mut s, "uni-a");
    tenant(&mut s, "uni-b");
    node(&mut s, "node-a", 4);
    label(&mut s, "node-a", "uni-a");
    ok(&mut s, alliance_prices(day(1, 0)), day(1, 0) - HOUR);
    ok(
        &mut s,
        prices(None, "A100-80GB", 10_000, day(10, 0)),
        day(1, 0),
    );

    // uni-b trains on 2 GPUs of uni-a's node across the price change.
    let b = submit_at(&mut s, "uni-b", spec(2, JobClass::Training), day(9, 22));
    run_on(&mut s, b, "node-a", Capacity::Borrowed, day(9, 23));
    exit(&mut s, b, "node-a", 0, day(10, 1), 2 * 3_600_000_000);
    // uni-a runs half a GPU of batch work on its own node for 4 hours.
    let a = submit_at(&mut s, "uni-a", fraction(500, JobClass::Batch), day(11, 0));
    let a_gpu = vec![uuid("node-a", 2)];
    ok(
        &mut s,
        Command::PlaceJob {
            job: a,
            tasks: vec![TaskPlacement {
                node: "node-a".into(),
                gpus: a_gpu,
            }],
            capacity: Capacity::Guaranteed,
        },
        day(12, 0),
    );
    ok(
        &mut s,
        Command::JobStarted {
            node: "node-a".into(),
            job: a,
            started_at: day(12, 0),
        },
        day(12, 0),
    );
    exit(&mut s, a, "node-a", 0, day(12, 4), 0);

    let lines = billing::bill(s.accounts(), None, day(1, 0), day(30, 24)).unwrap();
    let charges: Vec<(&str, Money, Money, Money, Money, Money, Money)> = lines
        .runs
        .iter()
        .map(|l| {
            let c = l.charge;
            (
                l.tenant.as_str(),
                c.gpu,
                c.energy,
                c.free,
                c.equity,
                c.net(),
                c.lending_credit,
            )
        })
        .collect();
    assert_eq!(
        charges,
        vec![
            ("uni-b", 36_000, 1_600, 9_000, 5_720, 22_880, 25_200),
            ("uni-a", 12_000, 0, 6_000, 0, 6_000, 0),
        ]
    );
    assert_eq!(lines.runs[0].capacity, Capacity::Borrowed);
    assert_eq!(lines.runs[1].capacity, Capacity::Own);

    let settle = billing::settlement(&lines);
    let nets: Vec<(&str, Money, Money, i128)> = settle
        .iter()
        .map(|r| (r.member.as_str(), r.owes, r.owed, r.net()))
        .collect();
    assert_eq!(
        nets,
        vec![("uni-a", 0, 25_200, 25_200), ("uni-b", 22_880, 0, -22_880)]
    );

    let by_class = billing::report(&lines, GroupBy::Class);
    let rows: Vec<(&str, &str, u64, Money)> = by_class
        .iter()
        .map(|r| (r.tenant.as_str(), r.key.as_str(), r.gpu_milli_ms, r.net))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("uni-a", "batch", 2 * 3_600_000 * 1000, 6_000),
            ("uni-b", "training", 4 * 3_600_000 * 1000, 22_880),
        ]
    );
    // A range that starts mid-month still consumes the free tier from the
    // month's start: the same charge for uni-a's run.
    let later = billing::bill(s.accounts(), Some("uni-a"), day(11, 0), day(13, 0)).unwrap();
    assert_eq!(later.runs.len(), 1);
    assert_eq!(later.runs[0].charge.net(), 6_000);
}

#[test]
fn cancelled_and_gpu_failed_runs_are_recorded_with_how_they_ended() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 2);
    let c = submit_at(&mut s, "zju", spec(1, JobClass::Batch), 0);
    run_on(&mut s, c, "n1", Capacity::Guaranteed, 1_000);
    ok(
        &mut s,
        Command::CancelJob {
            tenant: Some("zju".into()),
            job: c,
            reason: String::new(),
        },
        2_000,
    );
    exit(&mut s, c, "n1", 143, 3_000, 0);
    let g = submit_at(&mut s, "zju", spec(1, JobClass::Batch), 4_000);
    run_on(&mut s, g, "n1", Capacity::Guaranteed, 5_000);
    let gpu = s.job(g).unwrap().tasks[0].gpus[0].clone();
    ok(
        &mut s,
        Command::GpuHealthChanged {
            node: "n1".into(),
            gpu,
            healthy: false,
            reason: "Xid 79".into(),
            cleared_by: None,
        },
        6_000,
    );
    exit(&mut s, g, "n1", 143, 7_000, 0);
    let ended: Vec<(JobId, RunEnd, u64)> = s
        .accounts()
        .entries
        .iter()
        .map(|e| (e.job, e.ended, e.gpu_milli_ms))
        .collect();
    assert_eq!(
        ended,
        vec![
            (c, RunEnd::Cancelled, 2_000 * 1000),
            (g, RunEnd::GpuFailed, 2_000 * 1000),
        ]
    );
}

/// Six days of runs by two members on each other's nodes, under prices
/// with a free tier, an equity discount, a lending credit and a price
/// change in the middle of a run, with at most `kept` runs one by one.
fn six_busy_days(kept: usize) -> State {
    let day = |d: u32, h: i64| days_from_civil(2026, 11, d) * 24 * HOUR + h * HOUR;
    let mut s = State::default();
    s.policy.ledger_runs_kept = kept;
    tenant(&mut s, "uni-a");
    tenant(&mut s, "uni-b");
    node(&mut s, "node-a", 4);
    node(&mut s, "node-b", 4);
    label(&mut s, "node-a", "uni-a");
    label(&mut s, "node-b", "uni-b");
    ok(&mut s, alliance_prices(day(1, 0)), day(1, 0) - HOUR);
    ok(
        &mut s,
        prices(None, "A100-80GB", 10_000, day(4, 2)),
        day(1, 0),
    );
    for d in 1..=6 {
        let b = submit_at(&mut s, "uni-b", spec(2, JobClass::Training), day(d, 1));
        run_on(&mut s, b, "node-a", Capacity::Borrowed, day(d, 1));
        exit(
            &mut s,
            b,
            "node-a",
            0,
            day(d, 3),
            u64::from(d) * 1_000_000_000,
        );
        let a = submit_at(&mut s, "uni-a", fraction(500, JobClass::Batch), day(d, 4));
        run_on(&mut s, a, "node-a", Capacity::Own, day(d, 4));
        exit(&mut s, a, "node-a", 0, day(d, 6), 0);
        let i = submit_at(&mut s, "uni-a", spec(1, JobClass::Inference), day(d, 7));
        run_on(&mut s, i, "node-b", Capacity::Borrowed, day(d, 7));
        exit(&mut s, i, "node-b", (d % 2) as i32, day(d, 9), 500_000_000);
    }
    s
}

#[test]
fn runs_rolled_up_into_daily_totals_keep_bills_reports_settlement_and_budgets_exact() {
    let day = |d: u32, h: i64| days_from_civil(2026, 11, d) * 24 * HOUR + h * HOUR;
    let full = six_busy_days(usize::MAX);
    let rolled = six_busy_days(4);
    let (f, r) = (full.accounts(), rolled.accounts());
    assert_eq!(f.entries.len(), 18);
    // Days 1-4 and the first two runs of day 5 are totals now.
    assert_eq!(r.entries.len(), 4);
    assert_eq!(
        r.rolled.keys().copied().collect::<Vec<_>>(),
        (1..=5).map(|d| day(d, 0)).collect::<Vec<_>>()
    );
    assert!(
        r.entries.iter().eq(f.entries.range(14..)),
        "the newest runs are kept as they were"
    );
    assert_eq!(r.last_seq, 18);

    let ranges = [
        (day(1, 0), day(7, 0)),
        (day(2, 0), day(5, 0)),
        (day(6, 0), day(6, 8)),
        (0, Millis::MAX),
    ];
    for (from, to) in ranges {
        for tenant in [None, Some("uni-a"), Some("uni-b")] {
            let fb = billing::bill(f, tenant, from, to).unwrap();
            let rb = billing::bill(r, tenant, from, to).unwrap();
            for by in [GroupBy::Day, GroupBy::Model, GroupBy::Class] {
                assert_eq!(
                    billing::report(&fb, by),
                    billing::report(&rb, by),
                    "{tenant:?} {from}..{to} by {by:?}"
                );
            }
            assert_eq!(billing::settlement(&fb), billing::settlement(&rb));
        }
    }
    for t in ["uni-a", "uni-b"] {
        for d in 1..=6 {
            assert_eq!(
                f.spent(t, day(d, 0), day(d + 1, 0)),
                r.spent(t, day(d, 0), day(d + 1, 0))
            );
        }
        let month = (day(1, 0), Period::Month.next(day(1, 0)));
        assert!(r.spent(t, month.0, month.1) > 0);
        assert_eq!(f.spent(t, month.0, month.1), r.spent(t, month.0, month.1));
    }
    // The daily sums budgets read agree with the bill of the same days.
    let week = (day(1, 0), day(7, 0));
    let bill = billing::bill(r, None, week.0, week.1).unwrap();
    let billed: Money = billing::report(&bill, GroupBy::Class)
        .iter()
        .map(|x| x.net)
        .sum();
    let spent: Money = ["uni-a", "uni-b"]
        .iter()
        .map(|t| r.spent(t, week.0, week.1))
        .sum();
    assert!(billed > 0);
    assert_eq!(billed, spent);

    // A boundary inside a day kept as totals cannot be answered exactly;
    // inside a day still kept run by run it can.
    let err = billing::bill(r, None, day(2, 5), day(7, 0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "runs that ended on 2026-11-02 are kept only as daily totals, so a range cannot start \
         or end at 2026-11-02T05:00:00Z; start and end it at midnight UTC (e.g. 2026-11-02T00:00:00Z)"
    );
    assert!(billing::bill(r, None, day(6, 5), day(6, 8)).is_ok());

    // Run by run only where runs are kept one by one.
    let err = billing::runs(r, Some("uni-b"), day(5, 0), day(7, 0)).unwrap_err();
    assert_eq!(
        err,
        billing::Inexact::RolledUp {
            detail_from: day(6, 0)
        }
    );
    assert!(err
        .to_string()
        .starts_with("runs that ended before 2026-11-06T00:00:00Z are kept only as daily totals"));
    assert_eq!(
        billing::runs(r, None, day(6, 0), day(7, 0)).unwrap(),
        billing::runs(f, None, day(6, 0), day(7, 0)).unwrap()
    );

    // Totals survive a snapshot round trip, and the budget sums with them.
    let back: State = serde_json::from_str(&serde_json::to_string(&rolled).unwrap()).unwrap();
    assert_eq!(back, rolled);
    assert_eq!(
        back.accounts().spent("uni-b", day(1, 0), day(7, 0)),
        r.spent("uni-b", day(1, 0), day(7, 0))
    );
}

#[test]
fn a_ledger_stored_before_runs_were_priced_when_recorded_is_priced_on_load() {
    let s = six_busy_days(usize::MAX);
    let mut json = serde_json::to_value(&s).unwrap();
    let accounts = json["accounts"].as_object_mut().unwrap();
    for field in ["rolled", "last_seq", "last_end", "free_used", "form"] {
        accounts.remove(field);
    }
    // Stored then as one record per run (snapshot formats 1 and 2), with
    // no charge.
    let records = s.accounts().entries.iter().map(|e| {
        let mut record = serde_json::to_value(&**e).unwrap();
        record.as_object_mut().unwrap().remove("charge");
        record
    });
    accounts.insert("entries".into(), records.collect());
    let old: State = serde_json::from_value(json).unwrap();
    assert_eq!(old.accounts(), s.accounts());
}

#[test]
fn prices_cannot_change_under_a_run_already_recorded() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 1);
    ok(&mut s, prices(Some("CNY"), "A100-80GB", 1_000, 0), 0);
    let j = submit_at(&mut s, "zju", spec(1, JobClass::Batch), 0);
    run_on(&mut s, j, "n1", Capacity::Guaranteed, 0);
    // The agent's clock is ahead: the run ends after the leader's now.
    exit(&mut s, j, "n1", 0, 2 * HOUR, 0);
    let before = s.clone();
    let err = s
        .apply(prices(None, "A100-80GB", 2_000, HOUR), HOUR)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid prices: a run already recorded ended at 1970-01-01T02:00:00Z, after the effective \
         time 1970-01-01T01:00:00Z; recorded runs keep the prices they were charged"
    );
    assert_eq!(s, before);
    ok(&mut s, prices(None, "A100-80GB", 2_000, 2 * HOUR), HOUR);
}
