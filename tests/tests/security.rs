//! Access control with real processes: a revoked token is refused on every
//! replica, the audit trail survives failover and restart, one tenant's
//! flood does not rate-limit another, and the tenant kill switch stops
//! running work.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use edupool_proto::v1 as pb;
use edupool_proto::v1::job_service_client::JobServiceClient;
use edupool_tests::cluster::Cluster;
use edupool_tests::{eventually, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(30);

fn create_token(endpoints: &str, args: &[&str]) -> Result<(String, String)> {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let v = Cluster::ctl_json(endpoints, ADMIN_TOKEN, &all)?;
    Ok((
        v["token"]["id"].as_str().expect("an id").to_string(),
        v["secret"].as_str().expect("a secret").to_string(),
    ))
}

fn audit(endpoint: &str, extra: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut args = vec!["audit", "list"];
    args.extend(extra);
    let v = Cluster::ctl_json(endpoint, ADMIN_TOKEN, &args)?;
    Ok(v.as_array().expect("a list").clone())
}

fn has(records: &[serde_json::Value], action: &str, target: &str) -> bool {
    records
        .iter()
        .any(|r| r["action"] == action && r["target"] == target && r["result"] == "ok")
}

#[test]
fn a_revoked_token_is_refused_everywhere_and_the_audit_trail_survives_failover() -> Result<()> {
    let mut c = Cluster::start(3, &[])?;
    let leader = c.leader(WAIT)?;
    let all = c.endpoints();
    Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let (id, secret) = create_token(
        &all,
        &["--role", "member", "--tenant", "zju", "--name", "alice"],
    )?;
    // Every replica knows the token before it is revoked.
    for i in c.ids() {
        eventually("the token on every replica", WAIT, || {
            let out = Cluster::ctl_at(&c.endpoint(i), &secret, &["--stale-ok", "job", "list"]);
            out.status.success().then_some(())
        })?;
    }

    Cluster::ctl_json(&all, ADMIN_TOKEN, &["token", "revoke", &id])?;
    let revoked = Instant::now();
    for i in c.ids() {
        // Each replica answers from its own state (--stale-ok): it refuses
        // the token as soon as it has applied the revocation.
        loop {
            let out = Cluster::ctl_at(&c.endpoint(i), &secret, &["--stale-ok", "job", "list"]);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() && err.contains("not valid") {
                break;
            }
            if revoked.elapsed() > Duration::from_secs(1) {
                bail!("replica {i} still accepts the revoked token after a second: {err}");
            }
        }
    }
    let listed = Cluster::ctl_json(&all, ADMIN_TOKEN, &["token", "list"])?;
    let row = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("the revoked token is listed");
    assert!(row["revoked_at"].is_string(), "{row}");
    assert!(
        !listed.to_string().contains(&secret),
        "token list never shows a secret"
    );

    let before = audit(&all, &[])?;
    assert!(has(&before, "token.create", &id), "{before:?}");
    assert!(has(&before, "token.revoke", &id), "{before:?}");
    assert!(has(&before, "tenant.create", "zju"), "{before:?}");

    // Failover: the new leader has the same trail.
    c.kill9(leader);
    let next = c.leader(WAIT)?;
    assert_ne!(next, leader);
    let after = audit(&c.endpoint(next), &["--action", "token."])?;
    assert!(has(&after, "token.create", &id), "{after:?}");
    assert!(has(&after, "token.revoke", &id), "{after:?}");
    assert!(after
        .iter()
        .all(|r| r["action"].as_str().unwrap().starts_with("token.")));

    // Restart: the old leader comes back with the trail from its disk and log.
    c.restart(leader)?;
    eventually("the restarted replica's audit trail", WAIT, || {
        let v = audit(
            &c.endpoint(leader),
            &["--stale-ok", "--actor", "bootstrap-admin"],
        )
        .ok()?;
        (has(&v, "token.revoke", &id) && has(&v, "tenant.create", "zju")).then_some(())
    })?;
    Ok(())
}

/// Submits one job over gRPC; the status on refusal.
async fn submit(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    submit_command(client, token, vec!["true".into()]).await
}

async fn submit_command(
    client: &mut JobServiceClient<tonic::transport::Channel>,
    token: &str,
    command: Vec<String>,
) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        array: 0,
        request_id: String::new(),
        spec: Some(pb::JobSpec {
            command,
            gpus: 1,
            ..Default::default()
        }),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    client.submit_job(req).await.map(|_| ())
}

#[test]
fn one_tenants_flood_does_not_rate_limit_another_and_the_kill_switch_stops_its_work() -> Result<()>
{
    let c = Cluster::start(1, &["--rate-limit", "10", "--rate-burst", "20"])?;
    let work = tempfile::tempdir()?;
    let _agent = c.agent("n1", "2xA100-80GB", work.path())?;
    let at = c.endpoint(1);
    c.leader(WAIT)?;
    for t in ["flood", "calm"] {
        Cluster::ctl_json(&at, ADMIN_TOKEN, &["tenant", "create", t])?;
    }
    let (_, flood) = create_token(&at, &["--role", "member", "--tenant", "flood"])?;
    let (_, calm) = create_token(&at, &["--role", "member", "--tenant", "calm"])?;
    eventually("the agent's node", WAIT, || {
        let v = Cluster::ctl_json(&at, ADMIN_TOKEN, &["node", "list"]).ok()?;
        (v.as_array()?.len() == 1).then_some(())
    })?;

    let rt = tokio::runtime::Runtime::new()?;
    let (flood_results, calm_results) = rt.block_on(async {
        let channel = c.channel(1).await?;
        // Four floods at once, each far over the token's rate.
        let floods: Vec<_> = (0..4)
            .map(|_| {
                let mut client = JobServiceClient::new(channel.clone());
                let token = flood.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for _ in 0..100 {
                        out.push(submit(&mut client, &token).await);
                    }
                    out
                })
            })
            .collect();
        // The other tenant stays within its own budget meanwhile.
        let mut client = JobServiceClient::new(channel.clone());
        let mut calm_results = Vec::new();
        for _ in 0..15 {
            calm_results.push(submit(&mut client, &calm).await);
        }
        let mut flood_results = Vec::new();
        for f in floods {
            flood_results.extend(f.await?);
        }
        // A request over the size limit is refused before it is decoded.
        let huge = submit_command(&mut client, &calm, vec!["x".repeat(2 << 20)]).await;
        let huge = huge.unwrap_err();
        assert_eq!(huge.code(), tonic::Code::OutOfRange, "{huge:?}");
        anyhow::Ok((flood_results, calm_results))
    })?;
    for r in &calm_results {
        assert!(r.is_ok(), "a calm tenant's submit failed: {r:?}");
    }
    let calm_jobs = Cluster::ctl_json(&at, ADMIN_TOKEN, &["job", "list"])?
        .as_array()
        .map_or(0, |jobs| {
            jobs.iter().filter(|j| j["tenant"] == "calm").count()
        });
    assert_eq!(calm_jobs, 15, "the oversized request must not add a job");
    let limited: Vec<&tonic::Status> = flood_results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        .collect();
    assert!(!limited.is_empty(), "the flood was never rate-limited");
    let s = limited[0];
    assert!(s.metadata().get("retry-after").is_some(), "{s:?}");
    let delay = edupool_scheduler::api::retry_info::decode(s.details());
    assert!(delay.is_some_and(|d| d > Duration::ZERO), "{s:?}");

    // The kill switch: the calm tenant's running job is stopped at once.
    eventually("the calm tenant's rate budget", WAIT, || {
        Cluster::ctl_json(
            &at,
            &calm,
            &[
                "job", "submit", "--gpus", "1", "--name", "long", "--", "sleep", "600",
            ],
        )
        .ok()
    })?;
    eventually("the long job to run", WAIT, || {
        let v = Cluster::ctl_json(&at, &calm, &["job", "list", "--state", "running"]).ok()?;
        v.as_array()?
            .iter()
            .any(|j| j["name"] == "long")
            .then_some(())
    })?;
    let s = Cluster::ctl_json(
        &at,
        ADMIN_TOKEN,
        &[
            "tenant",
            "suspend",
            "calm",
            "--stop-running",
            "--reason",
            "incident 42",
        ],
    )?;
    assert_eq!(s["suspended"], true, "{s}");
    let tenants = Cluster::ctl_json(&at, ADMIN_TOKEN, &["tenant", "list"])?;
    let calm_row = tenants
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["name"] == "calm")
        .expect("the calm tenant is listed");
    assert_eq!(calm_row["suspended"], true, "{calm_row}");
    assert_eq!(calm_row["suspended_reason"], "incident 42", "{calm_row}");
    eventually("the long job to be stopped", WAIT, || {
        let v = Cluster::ctl_json(&at, &calm, &["job", "list", "--state", "cancelled"]).ok()?;
        v.as_array()?
            .iter()
            .any(|j| j["name"] == "long")
            .then_some(())
    })?;
    // Refused with the reason (retried only while the token is over its rate).
    let err = eventually("a refused submit", WAIT, || {
        let out = Cluster::ctl_at(&at, &calm, &["job", "submit", "--gpus", "1", "--", "true"]);
        assert!(!out.status.success(), "a suspended tenant's submit passed");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (!err.contains("request rate")).then_some(err)
    })?;
    assert!(
        err.contains("suspended") && err.contains("incident 42"),
        "{err}"
    );
    Cluster::ctl_json(&at, ADMIN_TOKEN, &["tenant", "resume", "calm"])?;
    eventually("a submit after resume", WAIT, || {
        Cluster::ctl_json(&at, &calm, &["job", "submit", "--gpus", "1", "--", "true"]).ok()
    })?;
    let trail = audit(&at, &["--tenant", "calm", "--action", "tenant."])?;
    assert!(has(&trail, "tenant.suspend", "calm"), "{trail:?}");
    assert!(has(&trail, "tenant.resume", "calm"), "{trail:?}");
    Ok(())
}

/// Every ctl read of the job and of the audit trail, as text.
fn reads_of(at: &str, token: &str, id: &str) -> Vec<(String, String)> {
    let reads: [&[&str]; 5] = [
        &["job", "get", id],
        &["job", "list"],
        &["job", "explain", id],
        &["audit", "list"],
        &["audit", "export", "--after", "0"],
    ];
    reads
        .iter()
        .map(|args| {
            let out = Cluster::ctl_at(at, token, &[&["--output", "json"], *args].concat());
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (args.join(" "), text)
        })
        .collect()
}

#[test]
fn a_secret_env_value_reaches_the_job_after_a_failover_and_no_read_shows_it() -> Result<()> {
    const VALUE: &str = "s3cr3t-0b7e41";
    let mut c = Cluster::start(3, &[])?;
    let leader = c.leader(WAIT)?;
    let all = c.endpoints();
    Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let (_, member) = create_token(&all, &["--role", "member", "--tenant", "zju"])?;
    let (_, auditor) = create_token(&all, &["--role", "auditor"])?;
    let dir = tempfile::tempdir()?;
    let secrets = dir.path().join("secrets.env");
    std::fs::write(&secrets, format!("API_KEY={VALUE}\n"))?;
    let _agent = c.agent("n1", "1xA100-80GB", dir.path())?;
    Cluster::wait_for_nodes(&all, 1, WAIT)?;
    // Submitted while the only node is cordoned, so the job waits, and the
    // replica that places it is not the one that accepted it.
    Cluster::ctl_json(&all, ADMIN_TOKEN, &["node", "cordon", "n1"])?;
    let job = Cluster::ctl_json(
        &all,
        &member,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--env",
            "PLAIN=shown",
            "--secret-env-file",
            &secrets.to_string_lossy(),
            "--",
            "sh",
            "-c",
            "echo \"key=$API_KEY plain=$PLAIN\"",
        ],
    )?;
    assert!(!job.to_string().contains(VALUE), "{job}");
    let id = job["id"].as_str().expect("an id").to_string();
    c.kill9(leader);
    let next = c.leader(WAIT)?;
    let at = c.endpoint(next);
    Cluster::ctl_json(&at, ADMIN_TOKEN, &["node", "uncordon", "n1"])?;
    eventually("the job to succeed", WAIT, || {
        let v = Cluster::ctl_json(&at, &member, &["job", "get", &id]).ok()?;
        (v["state"] == "succeeded").then_some(())
    })?;
    let logs = Cluster::ctl_at(&at, &member, &["job", "logs", &id]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains(&format!("key={VALUE} plain=shown")),
        "the job's log: {logs:?}"
    );
    for (token, who) in [
        (&member, "member"),
        (&auditor, "auditor"),
        (&ADMIN_TOKEN.to_string(), "admin"),
    ] {
        for (read, text) in reads_of(&at, token, &id) {
            assert!(
                !text.contains(VALUE),
                "`{read}` as {who} shows the secret: {text}"
            );
        }
    }
    let got = Cluster::ctl_json(&at, &member, &["job", "get", &id])?;
    assert!(
        got.to_string().contains("API_KEY"),
        "the name is shown: {got}"
    );
    Ok(())
}

#[test]
fn refused_calls_are_counted_apart_and_the_export_has_every_record_in_order() -> Result<()> {
    let c = Cluster::start(1, &[])?;
    let at = c.endpoint(1);
    c.leader(WAIT)?;
    Cluster::ctl_json(&at, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let (id, member) = create_token(&at, &["--role", "member", "--tenant", "zju"])?;
    for n in 0..20 {
        let out = Cluster::ctl_at(&at, &member, &["job", "cancel", &format!("j-{}", 900 + n)]);
        assert!(!out.status.success());
    }
    let refused = Cluster::ctl_json(&at, ADMIN_TOKEN, &["audit", "refused", "--actor", &id])?;
    let refused = refused.as_array().expect("a list");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["action"], "job.cancel");
    assert_eq!(refused[0]["count"], 20);
    assert_eq!(refused[0]["last_target"], "j-919");

    let out = Cluster::ctl_at(&at, ADMIN_TOKEN, &["audit", "export", "--after", "0"]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = lines.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{lines:?}"
    );
    assert!(lines.iter().all(|r| r["result"] == "ok"), "{lines:?}");
    assert!(has(&lines, "tenant.create", "zju"), "{lines:?}");
    assert!(has(&lines, "token.create", &id), "{lines:?}");
    // Past the newest: an explicit error, not an empty answer.
    let ahead = seqs.len() + 5;
    let out = Cluster::ctl_at(
        &at,
        ADMIN_TOKEN,
        &["audit", "export", "--after", &ahead.to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no audit record after that"), "{err}");
    Ok(())
}
