//! The planner's indexes beside the state stay equal to ones built afresh
//! (the property test in `apply_proptests` checks every command; these
//! name the cases it found).

use super::tests_support::*;
use super::*;

/// A pool of one tenant and one node, keeping no final job: a job that
/// ends is archived by the same `apply`.
fn archiving_pool() -> Indexed {
    let mut s = State::default();
    s.policy.final_jobs_kept = 0;
    let mut s = Indexed::new(s);
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    s
}

#[test]
fn a_job_archived_as_it_exits_gives_its_gpus_back_in_the_free_index() {
    let mut s = archiving_pool();
    let job = submit(&mut s, "zju", 2, JobClass::Batch);
    apply_ok(
        &mut s,
        Command::PlaceJob {
            job,
            tasks: vec![TaskPlacement {
                node: "n1".into(),
                gpus: vec![uuid("n1", 0), uuid("n1", 1)],
            }],
            capacity: Capacity::Guaranteed,
        },
    );
    let _ = (s.free_capacity(), s.holdings(), s.contributed());
    exit_ok(&mut s, "n1", job, 2_000);
    assert!(s.job(job).is_none(), "the exited job was archived");
    assert!(s.kept_indexes_are_exact(), "the index still holds its GPUs");
    let n1 = s.free_capacity().layout.position("n1").unwrap();
    let free = s.free_capacity().free.of(&s.free_capacity().layout, n1);
    assert_eq!(free, [WHOLE_GPU; 4]);
}
