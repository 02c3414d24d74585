//! The audit trail: refused calls apart, retention by log time, reading
//! from a sequence number, and what is counted as dropped.

use super::tests_support::*;
use super::*;

const DAY: Millis = 24 * 3600 * 1000;

/// A member of `tenant` acting through `token`.
fn member(token: &str, tenant: &str) -> Actor {
    Actor {
        token: token.into(),
        name: token.into(),
        role: Some(Role::Member),
        tenant: Some(tenant.into()),
    }
}

fn accepted(s: &mut State, action: &str, at: Millis) {
    let cmd = Command::RecordAudit {
        actor: actor("admin"),
        action: action.into(),
        target: String::new(),
        result: AuditResult::Ok,
    };
    s.apply(cmd, at).expect("recorded");
}

#[test]
fn ten_thousand_refused_calls_leave_every_accepted_record_and_are_aggregated() {
    let mut s = State::default();
    let audited = |actor: Actor, action: &str, target: &str, cmd: Command| Command::Audited {
        actor,
        action: action.into(),
        target: target.into(),
        cmd: Box::new(cmd),
    };
    let create = Command::CreateTenant {
        name: "zju".into(),
        token_hash: "h".into(),
    };
    let cmd = audited(actor("admin"), "tenant.create", "zju", create);
    s.apply(cmd, 1_000).unwrap();
    node(&mut s, "n1", 4);
    let job = audited_submit(&mut s, 1);
    // The probe: 10,400 cancels of jobs that do not exist, at 190 a second.
    for i in 0..10_400u64 {
        let cancel = Command::CancelJob {
            tenant: Some("zju".into()),
            job: JobId(1_000_000 + i),
            reason: String::new(),
        };
        let at = 2_000 + (i as Millis) * 1000 / 190;
        let target = cancel_target(i);
        let cmd = audited(member("tok-9", "zju"), "job.cancel", &target, cancel);
        assert!(s.apply(cmd, at).is_err());
    }
    let trail: Vec<(&str, &str)> = s
        .audit()
        .map(|r| (r.action.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        trail,
        [("tenant.create", "zju"), ("job.submit", &*job.to_string())]
    );
    let refused: Vec<&RefusedCalls> = s.refused_calls().collect();
    assert_eq!(refused.len(), 1, "one aggregate for the caller and action");
    let r = refused[0];
    assert_eq!(
        (r.actor.token.as_str(), r.action.as_str()),
        ("tok-9", "job.cancel")
    );
    assert_eq!(r.count, 10_400);
    assert_eq!(r.first_at, 2_000);
    assert_eq!(r.last_at, 2_000 + 10_399 * 1000 / 190);
    assert_eq!(r.last_target, cancel_target(10_399));
    assert!(
        matches!(&r.result, AuditResult::Rejected(d) if d.contains("1010399")),
        "{:?}",
        r.result
    );
    assert_eq!(s.audit_dropped(), &AuditDropped::default());
}

fn cancel_target(i: u64) -> String {
    JobId(1_000_000 + i).to_string()
}

#[test]
fn denials_are_counted_per_caller_action_and_result() {
    let mut s = State::default();
    let deny = |token: &str, action: &str, target: &str| Command::RecordAudit {
        actor: member(token, "zju"),
        action: action.into(),
        target: target.into(),
        result: AuditResult::Denied("no".into()),
    };
    for (cmd, at) in [
        (deny("tok-1", "tenant.suspend", "a"), 10),
        (deny("tok-1", "tenant.suspend", "b"), 20),
        (deny("tok-1", "node.cordon", "n1"), 30),
        (deny("tok-2", "tenant.suspend", "c"), 40),
    ] {
        s.apply(cmd, at).unwrap();
    }
    let seen: Vec<(&str, &str, u64, Millis, Millis, &str)> = s
        .refused_calls()
        .map(|c| {
            let t = (c.actor.token.as_str(), c.action.as_str(), c.count);
            (t.0, t.1, t.2, c.first_at, c.last_at, c.last_target.as_str())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("tok-1", "node.cordon", 1, 30, 30, "n1"),
            ("tok-1", "tenant.suspend", 2, 10, 20, "b"),
            ("tok-2", "tenant.suspend", 1, 40, 40, "c"),
        ]
    );
    assert_eq!(s.audit().count(), 0);
}

#[test]
fn the_refused_table_is_bounded_and_the_least_recently_seen_goes() {
    let mut s = State::default();
    for i in 0..=AUDIT_REFUSED_KEYS as Millis {
        let cmd = Command::RecordAudit {
            actor: member(&format!("tok-{i}"), "zju"),
            action: "job.cancel".into(),
            target: String::new(),
            result: AuditResult::Denied("no".into()),
        };
        // tok-0 is seen again last but one, so tok-1 is the stalest.
        let at = if i == AUDIT_REFUSED_KEYS as Millis {
            10
        } else {
            100 + i
        };
        s.apply(cmd.clone(), at).unwrap();
        if i == 0 {
            s.apply(cmd, 1_000_000).unwrap();
        }
    }
    assert_eq!(s.refused_calls().count(), AUDIT_REFUSED_KEYS);
    assert_eq!(s.audit_dropped().refused, 1);
    let tokens: Vec<&str> = s.refused_calls().map(|c| c.actor.token.as_str()).collect();
    assert!(tokens.contains(&"tok-0") && !tokens.contains(&"tok-1"));
    let newest = format!("tok-{AUDIT_REFUSED_KEYS}");
    assert!(tokens.contains(&newest.as_str()), "the newest stays");
}

#[test]
fn accepted_records_are_kept_for_the_retention_window_of_log_time() {
    let mut s = State::default();
    accepted(&mut s, "tenant.create", 0);
    accepted(&mut s, "token.create", 30 * DAY);
    accepted(&mut s, "job.submit", 90 * DAY);
    assert_eq!(s.audit().count(), 3, "exactly 90 days old is still kept");
    accepted(&mut s, "job.submit", 90 * DAY + 1);
    let seqs: Vec<u64> = s.audit().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 3, 4]);
    accepted(&mut s, "job.cancel", 200 * DAY);
    let seqs: Vec<u64> = s.audit().map(|r| r.seq).collect();
    assert_eq!(seqs, [5]);
    assert_eq!(
        s.audit_dropped(),
        &AuditDropped {
            expired: 4,
            over_capacity: 0,
            refused: 0
        }
    );
}

#[test]
fn beyond_its_count_bound_the_trail_drops_the_oldest_and_counts_them() {
    let mut s = State::default();
    for i in 0..(AUDIT_MAX_RECORDS as Millis + 5) {
        accepted(&mut s, "job.submit", i);
    }
    assert_eq!(s.audit().count(), AUDIT_MAX_RECORDS);
    assert_eq!(s.audit().next().unwrap().seq, 6);
    assert_eq!(s.audit_dropped().over_capacity, 5);
    assert_eq!(s.audit_dropped().expired, 0);
}

#[test]
fn reading_after_a_sequence_number_sees_every_record_in_order_or_the_gap() {
    let mut s = State::default();
    for i in 0..5 {
        accepted(&mut s, "job.submit", i * DAY);
    }
    let after = |s: &State, seq| -> Result<Vec<u64>, AuditGap> {
        Ok(s.audit_after(seq)?.map(|r| r.seq).collect())
    };
    assert_eq!(after(&s, 0), Ok(vec![1, 2, 3, 4, 5]));
    assert_eq!(after(&s, 3), Ok(vec![4, 5]));
    assert_eq!(after(&s, 5), Ok(vec![]));
    assert_eq!(after(&s, 6), Err(AuditGap::Ahead { last: 5 }));
    // Records 1 and 2 pass their retention.
    accepted(&mut s, "job.submit", 91 * DAY + 1);
    assert_eq!(
        after(&s, 0),
        Err(AuditGap::Dropped {
            first_missing: 1,
            oldest: 3
        })
    );
    assert_eq!(
        after(&s, 1),
        Err(AuditGap::Dropped {
            first_missing: 2,
            oldest: 3
        })
    );
    assert_eq!(after(&s, 2), Ok(vec![3, 4, 5, 6]));
}

#[test]
fn a_state_saved_before_refused_calls_were_kept_apart_still_loads() {
    let mut s = State::default();
    accepted(&mut s, "tenant.create", 5);
    let mut json = serde_json::to_value(&s).unwrap();
    let sec = json["security"].as_object_mut().unwrap();
    assert!(sec.remove("refused").is_some() && sec.remove("audit_dropped").is_some());
    let old: State = serde_json::from_value(json).unwrap();
    assert_eq!(old.audit().count(), 1);
    assert_eq!(old.refused_calls().count(), 0);
    assert_eq!(old.audit_dropped(), &AuditDropped::default());
}
