use proptest::prelude::*;

use super::*;

const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
/// 10^6 GPU-years in GPU-milliseconds.
const MILLION_GPU_YEARS: u64 = 1_000_000 * YEAR_MS;

#[test]
fn the_roots_are_the_powers_they_stand_for() {
    for (j, &root) in ROOTS.iter().enumerate() {
        let want = (-(0.5f64.powi(j as i32 + 1))).exp2();
        let got = root as f64 / ONE as f64;
        assert!((got - want).abs() < 1e-15, "root {j}: {got} vs {want}");
    }
}

#[test]
fn decay_follows_the_half_life_curve() {
    let value = 1_000_000_000_000u64;
    for elapsed in [
        0,
        1,
        1_000,
        WEEK_MS / 3,
        WEEK_MS / 2,
        WEEK_MS - 1,
        5 * WEEK_MS + 12_345,
    ] {
        let want = value as f64 * (-(elapsed as f64) / WEEK_MS as f64).exp2();
        let got = decay(value, elapsed, WEEK_MS) as f64;
        assert!((got - want).abs() <= 1.0, "{elapsed} ms: {got} vs {want}");
    }
}

#[test]
fn whole_half_lives_halve_exactly_and_enough_of_them_leave_nothing() {
    assert_eq!(decay(1_000_001, WEEK_MS, WEEK_MS), 500_000);
    assert_eq!(decay(1 << 40, 10 * WEEK_MS, WEEK_MS), 1 << 30);
    assert_eq!(decay(u64::MAX, 64 * WEEK_MS, WEEK_MS), 0);
    assert_eq!(decay(u64::MAX, u64::MAX, WEEK_MS), 0);
    assert_eq!(decay(u64::MAX, u64::MAX, 0), 0);
    assert_eq!(decay(u64::MAX, 0, WEEK_MS), u64::MAX);
}

#[test]
fn charges_weigh_job_classes_in_thousandths() {
    // An hour on one GPU; on a quarter GPU; as batch work; as scavenger work.
    assert_eq!(
        weighted_gpu_ms(3_600_000, 1000, JobClass::Training),
        3_600_000
    );
    assert_eq!(
        weighted_gpu_ms(3_600_000, 250, JobClass::Inference),
        900_000
    );
    assert_eq!(weighted_gpu_ms(3_600_000, 1000, JobClass::Batch), 2_700_000);
    assert_eq!(weighted_gpu_ms(3_600_000, 1000, JobClass::Scavenger), 0);
    // A thousandth of a GPU for 1 ms is a millionth of a GPU-millisecond.
    assert_eq!(weighted_gpu_ms(1, 1, JobClass::Training), 0);
    assert_eq!(
        weighted_gpu_ms(u64::MAX, u64::MAX, JobClass::Training),
        u64::MAX
    );
}

#[test]
fn usage_written_as_float_gpu_seconds_reads_as_gpu_milliseconds() {
    let old: Usage = serde_json::from_str(r#"{"gpu_seconds":45.0004,"as_of":61000}"#).unwrap();
    assert_eq!(
        old,
        Usage {
            weighted_gpu_ms: 45_000,
            as_of: 61_000
        }
    );
    let new = serde_json::to_string(&old).unwrap();
    assert_eq!(new, r#"{"weighted_gpu_ms":45000,"as_of":61000}"#);
    assert_eq!(serde_json::from_str::<Usage>(&new).unwrap(), old);
    for (secs, ms) in [("-3.5", 0), ("1e300", u64::MAX), ("0.0005", 1)] {
        let json = format!(r#"{{"gpu_seconds":{secs},"as_of":0}}"#);
        let u: Usage = serde_json::from_str(&json).unwrap();
        assert_eq!(u.weighted_gpu_ms, ms, "{secs}");
    }
}

proptest! {
    #[test]
    fn decay_never_grows_with_time(
        value in 0..=MILLION_GPU_YEARS,
        half_life in 1..=10 * YEAR_MS,
        a in 0..=100 * YEAR_MS,
        b in 0..=100 * YEAR_MS,
    ) {
        let (early, late) = (a.min(b), a.max(b));
        let (then, now) = (decay(value, early, half_life), decay(value, late, half_life));
        prop_assert!(now <= then, "{value} after {early}: {then}, after {late}: {now}");
        prop_assert!(then <= value);
    }

    #[test]
    fn a_millisecond_more_never_leaves_more_not_even_across_a_half_life(
        value in 0..=MILLION_GPU_YEARS,
        half_life in 2..=10 * YEAR_MS,
        halvings in 0u64..70,
        offset in 0u64..3,
    ) {
        // Around the end of a whole number of half-lives, where the
        // fraction's factor hands over to a shift.
        let elapsed = (halvings * half_life + offset).saturating_sub(1);
        let (then, now) = (decay(value, elapsed, half_life), decay(value, elapsed + 1, half_life));
        prop_assert!(now <= then, "{value} after {elapsed}: {then}, then {now}");
    }

    #[test]
    fn each_half_life_halves(
        value in 0..=MILLION_GPU_YEARS,
        half_life in 1..=10 * YEAR_MS,
        elapsed in 0..=100 * YEAR_MS,
    ) {
        let before = decay(value, elapsed, half_life);
        let after = decay(value, elapsed + half_life, half_life);
        // One more shift of the same product: exactly half, rounded down.
        prop_assert_eq!(after, before / 2);
    }

    #[test]
    fn the_same_charges_at_the_same_stamps_give_the_same_bits(
        charges in proptest::collection::vec((0u64..YEAR_MS, 0..=MILLION_GPU_YEARS / 64), 1..20),
        half_life in 1..=YEAR_MS,
    ) {
        let mut stamp: Millis = 0;
        let stamped: Vec<(Millis, u64)> = charges
            .iter()
            .map(|&(gap, amount)| {
                stamp += gap as Millis;
                (stamp, amount)
            })
            .collect();
        let mut one = Usage::default();
        let mut two = Usage::default();
        for &(at, amount) in &stamped {
            one.add(at, half_life, amount);
        }
        // The same sequence, decayed to each stamp on its own first.
        for &(at, amount) in &stamped {
            two.weighted_gpu_ms = two.at(at, half_life);
            two.as_of = at;
            two.add(at, half_life, amount);
        }
        prop_assert_eq!(one, two);
        // Charges at one stamp split or merged give the same sum.
        let last = stamped.last().map_or(0, |s| s.0);
        let mut split = one;
        let mut merged = one;
        split.add(last, half_life, 7);
        split.add(last, half_life, 11);
        merged.add(last, half_life, 18);
        prop_assert_eq!(split, merged);
    }
}

mod in_the_state {
    use crate::state::tests_support::{
        apply_ok, audited_submit, exit_ok, node, spec, tenant, uuid,
    };
    use crate::state::{Command, JobClass, JobId, Millis, Outcome, State, TaskPlacement};

    fn run(s: &mut State, job: JobId, gpus: &[u32], from: Millis, until: Millis) {
        let tasks = vec![TaskPlacement {
            node: "n1".into(),
            gpus: gpus.iter().map(|&i| uuid("n1", i)).collect(),
        }];
        let capacity = Default::default();
        apply_ok(
            s,
            Command::PlaceJob {
                job,
                tasks,
                capacity,
            },
        );
        let started = Command::JobStarted {
            node: "n1".into(),
            job,
            started_at: from,
        };
        apply_ok(s, started);
        exit_ok(s, "n1", job, until);
    }

    fn submit(s: &mut State, tenant: &str, gpus: u32, milli: u32, class: JobClass) -> JobId {
        let spec = crate::state::JobSpec {
            gpu_fraction: milli,
            ..spec(gpus, class)
        };
        let cmd = Command::SubmitJob {
            tenant: tenant.into(),
            spec,
        };
        match apply_ok(s, cmd) {
            (Outcome::Job(id), _) => id,
            other => panic!("{other:?}"),
        }
    }

    /// Two tenants with usage: zju's two GPUs of training for an hour,
    /// then hdu's quarter GPU of batch work for ten minutes.
    fn charged() -> State {
        let mut s = State::default();
        tenant(&mut s, "zju");
        tenant(&mut s, "hdu");
        node(&mut s, "n1", 4);
        let a = submit(&mut s, "zju", 2, 0, JobClass::Training);
        run(&mut s, a, &[0, 1], 1_000, 3_601_000);
        let b = submit(&mut s, "hdu", 1, 250, JobClass::Batch);
        run(&mut s, b, &[2], 2_000, 602_000);
        audited_submit(&mut s, 1);
        s
    }

    #[test]
    fn a_finished_run_charges_class_weighted_gpu_milliseconds() {
        let s = charged();
        let usage = |t: &str| s.tenant(t).unwrap().usage;
        assert_eq!(
            (usage("zju").weighted_gpu_ms, usage("zju").as_of),
            (7_200_000, 3_601_000)
        );
        // 600 s × 1/4 GPU × 0.75.
        assert_eq!(
            (usage("hdu").weighted_gpu_ms, usage("hdu").as_of),
            (112_500, 602_000)
        );
    }

    /// Any float in the replicated state could differ between replicas;
    /// serde_json keeps integers and floats apart, so none may show up.
    #[test]
    fn the_state_holds_no_floats() {
        fn floats(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Number(n) if n.is_f64() => out.push(format!("{path} = {n}")),
                serde_json::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        floats(item, &format!("{path}[{i}]"), out);
                    }
                }
                serde_json::Value::Object(fields) => {
                    for (k, item) in fields {
                        floats(item, &format!("{path}.{k}"), out);
                    }
                }
                _ => {}
            }
        }
        let state = serde_json::to_value(charged()).unwrap();
        let mut found = vec![];
        floats(&state, "state", &mut found);
        assert!(found.is_empty(), "floats in the state: {found:?}");
        assert!(state.to_string().contains("\"weighted_gpu_ms\":112500"));
    }
}
