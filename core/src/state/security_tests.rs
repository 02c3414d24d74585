//! Tokens, suspension and the audit trail in the state machine.

use super::tests_support::*;
use super::*;

fn token(role: Role, tenant: Option<&str>, hash: &str) -> ApiToken {
    ApiToken {
        id: String::new(),
        name: format!("{role}"),
        role,
        tenant: tenant.map(str::to_string),
        created_at: 0,
        expires_at: None,
        revoked_at: None,
        created_by: "test".into(),
        hash: hash.into(),
    }
}

#[test]
fn tokens_get_ids_in_order_and_revocation_removes_the_hash() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    let (out, _) = apply_ok(
        &mut s,
        Command::CreateToken {
            token: token(Role::Member, Some("zju"), "h1"),
        },
    );
    assert_eq!(out, Outcome::Token("tok-1".into()));
    let grant = s.token_by_hash("h1").unwrap();
    assert_eq!(
        (grant.role, grant.tenant.as_deref()),
        (Role::Member, Some("zju"))
    );
    apply_ok(&mut s, Command::RevokeToken { id: "tok-1".into() });
    assert_eq!(s.token_by_hash("h1"), None);
    assert_eq!(s.api_token("tok-1").unwrap().revoked_at, Some(1_000));
}

#[test]
fn a_token_of_the_wrong_shape_changes_nothing() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    let before = s.clone();
    for bad in [
        token(Role::Member, None, "h"),
        token(Role::Auditor, Some("zju"), "h"),
        token(Role::Member, Some("nope"), "h"),
        token(Role::Admin, None, "hash-of-zju"),
    ] {
        assert!(s.apply(Command::CreateToken { token: bad }, 5).is_err());
        assert_eq!(s, before);
    }
}

#[test]
fn the_initial_tenant_token_is_a_revocable_tenant_admin() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    let grant = s.token_by_hash("hash-of-zju").unwrap();
    assert_eq!(grant.role, Role::TenantAdmin);
    assert!(grant.id.starts_with("init-"));
    apply_ok(
        &mut s,
        Command::RevokeToken {
            id: grant.id.clone(),
        },
    );
    assert_eq!(s.token_by_hash("hash-of-zju"), None);
    assert!(s.api_token(&grant.id).unwrap().revoked_at.is_some());
}

#[test]
fn a_suspended_tenant_submits_nothing_and_its_pending_jobs_are_not_placed() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    let pending = submit(&mut s, "zju", 1, JobClass::Batch);
    apply_ok(
        &mut s,
        Command::SuspendTenant {
            tenant: "zju".into(),
            reason: "incident".into(),
            stop_running: false,
            by: "tok-1".into(),
        },
    );
    let before = s.clone();
    let refused = s.apply(
        Command::SubmitJob {
            tenant: "zju".into(),
            spec: spec(1, JobClass::Batch),
        },
        2_000,
    );
    assert_eq!(
        refused.unwrap_err().to_string(),
        "tenant 'zju' is suspended: incident"
    );
    assert_eq!(s, before);
    let plan = crate::planner::plan(&Indexed::new(s.clone()), 2_000, &Default::default());
    assert!(plan.is_empty(), "{plan:?}");
    apply_ok(
        &mut s,
        Command::ResumeTenant {
            tenant: "zju".into(),
        },
    );
    let plan = crate::planner::plan(&Indexed::new(s.clone()), 3_000, &Default::default());
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].job(), pending);
}

#[test]
fn suspending_with_stop_running_stops_placed_jobs_with_their_grace_period() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    tenant(&mut s, "hdu");
    node(&mut s, "n1", 4);
    let mine = submit(&mut s, "zju", 1, JobClass::Batch);
    let other = submit(&mut s, "hdu", 1, JobClass::Batch);
    for d in crate::planner::plan(&Indexed::new(s.clone()), 1_000, &Default::default()) {
        apply_ok(&mut s, d.into_command());
    }
    let (_, effects) = apply_ok(
        &mut s,
        Command::SuspendTenant {
            tenant: "zju".into(),
            reason: "halt".into(),
            stop_running: true,
            by: "tok-1".into(),
        },
    );
    assert_eq!(
        effects,
        vec![
            Effect::StopJob {
                node: "n1".into(),
                job: mine,
                grace_secs: 5,
                reason: "tenant suspended: halt".into(),
            },
            Effect::JobChanged(mine),
        ]
    );
    assert_eq!(s.job(mine).unwrap().state, JobState::Cancelling);
    assert!(s.job(other).unwrap().state.is_placed());
    assert_ne!(s.job(other).unwrap().state, JobState::Cancelling);
}

#[test]
fn audited_commands_record_their_result_and_a_rejection_changes_only_the_trail() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    let job = audited_submit(&mut s, 1);
    assert_eq!(s.job_owner(job), Some("tok-7"));
    let before = s.clone();
    let refused = s.apply(
        Command::Audited {
            actor: actor("tok-7"),
            action: "tenant.quota".into(),
            target: "nope".into(),
            cmd: Box::new(Command::ResumeTenant {
                tenant: "nope".into(),
            }),
        },
        7_000,
    );
    assert!(refused.is_err());
    let trail: Vec<&AuditRecord> = s.audit().collect();
    assert_eq!(trail.len(), 1, "a refusal takes no place in the trail");
    assert_eq!(trail[0].target, job.to_string());
    assert_eq!(trail[0].result, AuditResult::Ok);
    let refusals: Vec<&RefusedCalls> = s.refused_calls().collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        (
            refusals[0].first_at,
            refusals[0].count,
            &*refusals[0].last_target
        ),
        (7_000, 1, "nope")
    );
    assert_eq!(
        refusals[0].result,
        AuditResult::Rejected("tenant 'nope' does not exist".into())
    );
    // Apart from the refusal's count, nothing changed.
    let mut without = s.clone();
    without.security = before.security.clone();
    assert_eq!(without, before);
}

#[test]
fn a_state_of_an_earlier_version_without_the_security_part_still_loads() {
    let mut s = State::default();
    tenant(&mut s, "zju");
    let mut json = serde_json::to_value(&s).unwrap();
    json.as_object_mut().unwrap().remove("security");
    let old: State = serde_json::from_value(json).unwrap();
    assert_eq!(
        old.token_by_hash("hash-of-zju").map(|t| t.role),
        Some(Role::TenantAdmin)
    );
}

#[test]
fn audit_fields_from_callers_are_clipped() {
    let mut s = State::default();
    let long = "é".repeat(100_000);
    let _ = s.apply(
        Command::Audited {
            actor: actor("a"),
            action: "tenant.quota".into(),
            target: long.clone(),
            cmd: Box::new(Command::ResumeTenant { tenant: long }),
        },
        1,
    );
    let r = s.refused_calls().next().unwrap();
    assert!(r.last_target.len() <= AUDIT_FIELD_BYTES);
    let AuditResult::Rejected(detail) = &r.result else {
        panic!("{:?}", r.result)
    };
    assert!(detail.len() <= AUDIT_FIELD_BYTES && detail.ends_with("..."));
}

#[test]
fn audited_job_commands_keep_the_derived_indexes_exact() {
    let mut s = Indexed::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    let audited = |action: &str, cmd: Command| Command::Audited {
        actor: actor("tok-7"),
        action: action.into(),
        target: String::new(),
        cmd: Box::new(cmd),
    };
    let placed = audited_submit(&mut s, 2);
    let waiting = submit(&mut s, "zju", 1, JobClass::Batch);
    apply_ok(
        &mut s,
        Command::PlaceJob {
            job: placed,
            tasks: vec![TaskPlacement {
                node: "n1".into(),
                gpus: vec![uuid("n1", 0), uuid("n1", 1)],
            }],
            capacity: Capacity::Guaranteed,
        },
    );
    // Build the kept indexes, so the audited commands below must keep them.
    let _ = (s.free_capacity(), s.holdings(), s.contributed());
    for job in [waiting, placed] {
        apply_ok(
            &mut s,
            audited(
                "job.cancel",
                Command::CancelJob {
                    tenant: None,
                    job,
                    reason: "by admin".into(),
                },
            ),
        );
        assert!(s.kept_indexes_are_exact(), "after cancelling {job}");
    }
    apply_ok(
        &mut s,
        audited(
            "node.cordon",
            Command::SetNodeSchedulable {
                node: "n1".into(),
                cordoned: true,
                draining: false,
            },
        ),
    );
    // The audited cordon reaches the nodes, as the bare command does.
    assert!(s.kept_indexes_are_exact(), "after the cordon");
    let _ = (s.free_capacity(), s.holdings(), s.contributed());
    apply_ok(
        &mut s,
        Command::JobExited {
            node: "n1".into(),
            job: placed,
            exit_code: None,
            reason: "stopped".into(),
            finished_at: 3_000,
            usage: JobUsage::default(),
        },
    );
    assert!(s.kept_indexes_are_exact(), "after the cordon and the exit");
    let live: Vec<JobId> = s.live_jobs().map(|j| j.id).collect();
    assert!(live.is_empty(), "both jobs left `live`: {live:?}");
    assert_eq!(s.job(placed).unwrap().state, JobState::Cancelled);
}

#[test]
fn an_archived_job_leaves_no_owner_behind() {
    let mut s = State::default();
    s.policy.final_jobs_kept = 0;
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    let job = audited_submit(&mut s, 1);
    assert_eq!(s.job_owner(job), Some("tok-7"));
    apply_ok(
        &mut s,
        Command::CancelJob {
            tenant: None,
            job,
            reason: String::new(),
        },
    );
    assert!(s.job(job).is_none(), "archived at once");
    assert_eq!(s.job_owner(job), None);
}
