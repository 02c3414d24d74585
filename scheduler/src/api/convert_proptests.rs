//! Hostile requests through every decoder and converter of the API edge:
//! arbitrary bytes into each request message, and messages with huge
//! strings, NUL bytes and extreme numbers into each converter. Nothing
//! panics, and a request that is refused, at the edge or by the state,
//! leaves the state's hash as it was.

use edupool_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;
use sha2::{Digest, Sha256};

use super::convert::{self, JobLimits};
use crate::state::tests_support::{node, tenant};
use crate::state::{Command, JobId, Role, State};

fn hash(s: &State) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(s).unwrap()))
}

fn pool() -> State {
    let mut s = State::default();
    tenant(&mut s, "zju");
    node(&mut s, "n1", 4);
    s
}

/// What `SubmitJob` does after authentication: convert, then propose.
/// A refusal anywhere must leave the state's hash unchanged.
fn submit_path(s: &mut State, spec: Option<pb::JobSpec>) {
    let before = hash(s);
    let Ok(spec) = convert::job_spec(spec, &JobLimits::default()) else {
        assert_eq!(hash(s), before);
        return;
    };
    let cmd = Command::SubmitJob {
        tenant: "zju".into(),
        spec,
    };
    if s.apply(cmd, 1_000).is_err() {
        assert_eq!(hash(s), before, "a rejected submit changed the state");
    }
}

/// Strings callers may send: short, huge, with NUL and control bytes.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[\\x00-\\x1f]{0,8}",
        Just("a".repeat(200_000)),
        Just("x\0y".to_string()),
        Just(String::new()),
    ]
}

fn job_spec() -> impl Strategy<Value = pb::JobSpec> {
    (
        (
            text(),
            prop::collection::vec(text(), 0..4),
            prop::collection::btree_map(text(), text(), 0..3),
            any::<u32>(),
            any::<i32>(),
            any::<u64>(),
            any::<u64>(),
            any::<i32>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<i32>(),
            any::<u32>(),
            text(),
            text(),
            any::<u64>(),
            text(),
        ),
        (text(), any::<u32>(), any::<bool>()),
    )
        .prop_map(
            |(
                (name, command, env, gpus, class, walltime, grace, lost),
                (retries, nodes, priority, fraction, model, gpu_class, mem, site),
                (preferred, level, no_requeue),
            )| pb::JobSpec {
                name,
                command,
                env: env.into_iter().collect(),
                gpus: gpus % 8,
                class,
                walltime_seconds: walltime,
                grace_period_seconds: grace,
                on_node_lost: lost,
                max_retries: retries,
                nodes: nodes % 4,
                priority,
                gpu_fraction: fraction % 2000,
                gpu_model: model,
                gpu_class,
                min_gpu_memory_bytes: mem,
                site,
                preferred_site: preferred,
                data_level: level % 6,
                no_requeue_on_preempt: no_requeue,
                secret_env: Default::default(),
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn hostile_specs_never_panic_and_refusals_change_nothing(spec in job_spec()) {
        let mut s = pool();
        submit_path(&mut s, Some(spec));
    }

    #[test]
    fn arbitrary_bytes_decode_or_fail_and_change_nothing(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut s = pool();
        if let Ok(r) = pb::SubmitJobRequest::decode(bytes.as_slice()) {
            submit_path(&mut s, r.spec);
        }
        if let Ok(r) = pb::LabelNodeRequest::decode(bytes.as_slice()) {
            let _ = convert::node_labels(r.labels);
        }
        if let Ok(r) = pb::SetTenantQuotaRequest::decode(bytes.as_slice()) {
            let _ = convert::quota(r.quota);
        }
        if let Ok(r) = pb::SetClassCapRequest::decode(bytes.as_slice()) {
            let _ = convert::parse_job_class(r.job_class);
            let _ = convert::cap(r.max_gpus);
        }
        if let Ok(r) = pb::SetTenantShareRequest::decode(bytes.as_slice()) {
            let _ = convert::weight("weight", r.weight_milli, 1000);
            let _ = convert::weight("equity", r.equity_milli, 1000);
        }
        if let Ok(r) = pb::AgentHello::decode(bytes.as_slice()) {
            let _ = convert::inventory(&r.node_name, r.gpus);
        }
        if let Ok(r) = pb::ListJobsRequest::decode(bytes.as_slice()) {
            for st in r.states {
                let _ = convert::parse_job_state(st);
            }
        }
        if let Ok(r) = pb::CreateTokenRequest::decode(bytes.as_slice()) {
            let _ = r.role.parse::<Role>();
        }
        for id in [
            pb::GetJobRequest::decode(bytes.as_slice()).map(|r| r.id),
            pb::CancelJobRequest::decode(bytes.as_slice()).map(|r| r.id),
        ]
        .into_iter()
        .flatten()
        {
            let _ = id.parse::<JobId>();
        }
        // Messages passed on without a converter only need to decode safely.
        let _ = pb::ListAuditRequest::decode(bytes.as_slice());
        let _ = pb::SuspendTenantRequest::decode(bytes.as_slice());
        let _ = pb::RevokeTokenRequest::decode(bytes.as_slice());
        let _ = pb::GetJobLogsRequest::decode(bytes.as_slice());
        prop_assert_eq!(hash(&s), hash(&pool()));
    }

    #[test]
    fn hostile_policy_values_never_panic(
        labels in (text(), text(), any::<u32>(), text()),
        quota in (text(), any::<i64>(), any::<i64>()),
        class in any::<i32>(),
        cap in any::<i64>(),
        gpus in prop::collection::vec((text(), any::<u32>(), text(), any::<u64>()), 0..70),
        node_name in text(),
    ) {
        let _ = convert::node_labels(Some(pb::NodeLabels {
            owner: labels.0,
            site: labels.1,
            data_level: labels.2,
            gpu_class: labels.3,
        }));
        let _ = convert::quota(Some(pb::Quota {
            gpu_class: quota.0,
            guaranteed: quota.1,
            borrow_limit: quota.2,
        }));
        let _ = convert::parse_job_class(class);
        let _ = convert::cap(cap);
        let inventory = gpus
            .into_iter()
            .map(|(uuid, index, model, memory_bytes)| pb::Gpu {
                uuid,
                index,
                model,
                memory_bytes,
                ..Default::default()
            })
            .collect();
        let _ = convert::inventory(&node_name, inventory);
    }
}
