//! Request ids: a repeated submit answers with the first one's jobs and
//! creates nothing; the memory is bounded by log time and per tenant.

use super::tests_support::*;
use super::*;

fn pool() -> State {
    let mut s = State::default();
    tenant(&mut s, "zju");
    tenant(&mut s, "hdu");
    node(&mut s, "n1", 4);
    s
}

fn keyed(tenant: &str, request_id: &str, gpus: u32, array: u32) -> Command {
    let spec = spec(gpus, JobClass::Batch);
    let tenant = tenant.to_string();
    let cmd = match array {
        0 => Command::SubmitJob { tenant, spec },
        count => Command::SubmitArray {
            tenant,
            spec,
            count,
        },
    };
    let audited = Command::Audited {
        actor: actor("tok-7"),
        action: "job.submit".into(),
        target: String::new(),
        cmd: Box::new(cmd),
    };
    Command::SubmitOnce {
        request_id: request_id.into(),
        cmd: Box::new(audited),
    }
}

fn jobs_of(s: &State, tenant: &str) -> usize {
    s.jobs().filter(|j| j.tenant == tenant).count()
}

#[test]
fn a_repeated_submit_returns_the_same_job_and_creates_nothing() {
    let mut s = pool();
    let (first, effects) = s.apply(keyed("zju", "r-1", 1, 0), 1_000).unwrap();
    let Outcome::Job(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(effects, vec![Effect::JobChanged(id)]);
    let before = s.clone();
    let (again, effects) = s.apply(keyed("zju", "r-1", 1, 0), 2_000).unwrap();
    assert_eq!(again, Outcome::Job(id));
    assert!(effects.is_empty());
    assert_eq!(jobs_of(&s, "zju"), 1);
    // Nothing at all changed: no job, no audit record, no owner.
    assert_eq!(s, before);
    // Another tenant's same request id is its own.
    let (other, _) = s.apply(keyed("hdu", "r-1", 1, 0), 3_000).unwrap();
    assert_ne!(other, Outcome::Job(id));
}

#[test]
fn a_repeat_after_the_job_ran_and_ended_still_answers_the_first_job() {
    let mut s = pool();
    let (Outcome::Job(id), _) = s.apply(keyed("zju", "r-1", 1, 0), 1_000).unwrap() else {
        panic!()
    };
    let cancel = Command::CancelJob {
        tenant: None,
        job: id,
        reason: "test".into(),
    };
    apply_ok(&mut s, cancel);
    assert!(s.job(id).unwrap().state.is_final());
    let (again, _) = s.apply(keyed("zju", "r-1", 1, 0), 5_000).unwrap();
    assert_eq!(again, Outcome::Job(id));
    assert_eq!(jobs_of(&s, "zju"), 1);
}

#[test]
fn an_array_carries_one_request_id_for_all_its_jobs() {
    let mut s = pool();
    let (first, _) = s.apply(keyed("zju", "arr", 1, 3), 1_000).unwrap();
    let (again, effects) = s.apply(keyed("zju", "arr", 1, 3), 1_500).unwrap();
    assert!(matches!(first, Outcome::Jobs { count: 3, .. }));
    assert_eq!(again, first);
    assert!(effects.is_empty());
    assert_eq!(jobs_of(&s, "zju"), 3);
}

#[test]
fn a_request_id_reused_for_another_spec_is_refused() {
    let mut s = pool();
    let (Outcome::Job(id), _) = s.apply(keyed("zju", "r-1", 1, 0), 1_000).unwrap() else {
        panic!()
    };
    let before = s.clone();
    let err = s.apply(keyed("zju", "r-1", 2, 0), 2_000).unwrap_err();
    assert_eq!(
        err,
        Rejection::RequestIdReused {
            request_id: "r-1".into(),
            first: id
        }
    );
    assert!(err.to_string().contains("new request id"), "{err}");
    // An array of the same spec is a different submission too.
    assert!(s.apply(keyed("zju", "r-1", 1, 2), 2_000).is_err());
    assert_eq!(s, before);
}

#[test]
fn a_refused_submit_leaves_its_request_id_free() {
    let mut s = pool();
    let err = s.apply(keyed("nobody", "r-1", 1, 0), 1_000).unwrap_err();
    assert_eq!(err, Rejection::UnknownTenant("nobody".into()));
    assert!(s.seen_request("nobody", "r-1", 1_000).is_none());
    let bad = s.apply(keyed("zju", "bad id", 1, 0), 1_000).unwrap_err();
    assert!(matches!(bad, Rejection::BadRequestId(_)), "{bad:?}");
    assert_eq!(jobs_of(&s, "zju"), 0);
}

#[test]
fn a_request_id_is_forgotten_after_the_window() {
    let mut s = pool();
    let (first, _) = s.apply(keyed("zju", "r-1", 1, 0), 1_000).unwrap();
    let last_moment = 1_000 + REQUEST_ID_WINDOW - 1;
    assert_eq!(
        s.apply(keyed("zju", "r-1", 1, 0), last_moment).unwrap().0,
        first
    );
    let (later, _) = s
        .apply(keyed("zju", "r-1", 1, 0), 1_000 + REQUEST_ID_WINDOW)
        .unwrap();
    assert_ne!(later, first);
    assert_eq!(jobs_of(&s, "zju"), 2);
    // The expired entry was dropped when the new one was remembered.
    assert_eq!(s.request_ids.len_of("zju"), 1);
}

#[test]
fn each_tenant_keeps_a_bounded_number_oldest_forgotten_first() {
    let mut s = pool();
    let mut ids = RequestIds::default();
    for n in 0..=REQUEST_IDS_PER_TENANT as u64 {
        ids.remember(
            "zju",
            SeenRequest {
                request_id: format!("r-{n}"),
                fingerprint: String::new(),
                first: JobId(n + 1),
                array: 0,
                seen_at: 1_000,
            },
        );
    }
    assert_eq!(ids.len_of("zju"), REQUEST_IDS_PER_TENANT);
    assert!(ids.get("zju", "r-0", 1_000).is_none());
    assert!(ids.get("zju", "r-1", 1_000).is_some());
    let last = format!("r-{REQUEST_IDS_PER_TENANT}");
    assert!(ids.get("zju", &last, 1_000).is_some());
    assert_eq!(ids.len_of("hdu"), 0);
    // Through apply as well: the state's table is the same type.
    s.request_ids = ids;
    s.apply(keyed("zju", "fresh", 1, 0), 1_000).unwrap();
    assert_eq!(s.request_ids.len_of("zju"), REQUEST_IDS_PER_TENANT);
    assert!(s.seen_request("zju", "r-1", 1_000).is_none());
}

#[test]
fn request_ids_survive_a_snapshot_round_trip() {
    let mut s = pool();
    let (first, _) = s.apply(keyed("zju", "r-1", 1, 0), 1_000).unwrap();
    s.apply(keyed("zju", "r-2", 1, 2), 1_100).unwrap();
    let mut bytes = Vec::new();
    let mut ser = rmp_serde::Serializer::new(&mut bytes).with_struct_map();
    serde::Serialize::serialize(&s, &mut ser).unwrap();
    let mut loaded: State = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(loaded, s);
    let json: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(json, s);
    // The reloaded table still answers a retry with the first job.
    let (again, effects) = loaded.apply(keyed("zju", "r-1", 1, 0), 2_000).unwrap();
    assert_eq!((again, effects), (first, vec![]));
    assert_eq!(jobs_of(&loaded, "zju"), 3);
}

#[test]
fn a_state_that_never_saw_a_request_id_serializes_as_before() {
    let s = pool();
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("request_ids"), "{text}");
    let loaded: State = serde_json::from_str(&text).unwrap();
    assert_eq!(loaded, s);
}

#[test]
fn request_ids_are_checked_for_shape() {
    assert!(check_request_id("4f1c2a9e-0b7d-4c55-9a0e-1f2e3d4c5b6a").is_ok());
    assert!(check_request_id("job:42.retry_1").is_ok());
    let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
    assert!(check_request_id(&long).unwrap_err().contains("at most 128"));
    assert!(check_request_id("a b").unwrap_err().contains("' '"));
    assert!(check_request_id("").unwrap_err().contains("empty"));
    assert!(check_request_id("é").is_err());
}
