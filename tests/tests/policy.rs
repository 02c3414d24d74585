//! The policy engine end to end, with the real binaries: a tenant that
//! borrowed another member's GPUs gives them back when the owner claims
//! its guarantee. The borrower's job sees SIGTERM (and gets its grace
//! period) before SIGKILL, goes back to the queue, and the owner's job runs.

use std::time::Duration;

use anyhow::Result;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn tenant(s: &Scheduler, name: &str) -> Result<String> {
    let v = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", name])?;
    Ok(v["token"].as_str().expect("a token").to_string())
}

fn wait_job(
    s: &Scheduler,
    token: &str,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value> {
    eventually(&format!("{id} to be {what}"), WAIT, || {
        let j = s.ctl_json(token, &["job", "get", id]).ok()?;
        ok(&j).then_some(j)
    })
}

fn submit(s: &Scheduler, token: &str, args: &[&str]) -> Result<String> {
    let v = s.ctl_json(token, &[&["job", "submit"], args].concat())?;
    Ok(v["id"].as_str().expect("an id").to_string())
}

#[test]
fn an_owner_reclaims_borrowed_gpus_and_the_borrower_gets_sigterm_first() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-b1", "2xA100-80GB", &dir.path().join("agent"))?;
    eventually("the agent to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.len() == 1 && nodes[0]["status"] == "ready").then_some(())
    })?;
    let alpha = tenant(&s, "alpha")?;
    let beta = tenant(&s, "beta")?;
    // beta contributed the node: its two GPUs are beta's guarantee.
    s.ctl_json(
        ADMIN_TOKEN,
        &[
            "node", "label", "gpu-b1", "--owner", "beta", "--site", "campus",
        ],
    )?;
    let shown = s.ctl_json(&beta, &["tenant", "show", "beta"])?;
    assert_eq!(shown["classes"][0]["guaranteed"], 2.0, "{shown}");

    // alpha borrows both GPUs with a job that traps SIGTERM, notes it in
    // its log and keeps running until SIGKILL.
    let borrower = submit(
        &s,
        &alpha,
        &[
            "--gpus",
            "2",
            "--grace-period",
            "2s",
            "--",
            "sh",
            "-c",
            "trap 'echo got-sigterm' TERM; echo started; while true; do sleep 0.1; done",
        ],
    )?;
    let running = wait_job(&s, &alpha, &borrower, "running", |j| {
        j["state"] == "running"
    })?;
    assert_eq!(running["capacity"], "borrowed", "{running}");

    // beta claims one GPU of its guarantee. Its job keeps the GPU while
    // the test looks, so the borrower (2 GPUs) cannot run again meanwhile.
    let owner = submit(
        &s,
        &beta,
        &[
            "--gpus",
            "1",
            "--class",
            "training",
            "--",
            "sh",
            "-c",
            "echo owner-ran; sleep 120",
        ],
    )?;
    let claimed = wait_job(&s, &beta, &owner, "running", |j| j["state"] == "running")?;
    assert_eq!(claimed["capacity"], "own", "{claimed}");

    // The borrower was preempted and requeued; it saw SIGTERM first.
    let requeued = wait_job(&s, &alpha, &borrower, "requeued", |j| {
        j["attempt"] == 2 && j["preemptions"] == 1
    })?;
    assert!(
        requeued["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("reclaims its guaranteed A100 GPUs"),
        "{requeued}"
    );
    let logs = s.ctl(&alpha, &["job", "logs", &borrower]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("started"), "{text}");
    assert!(text.contains("got-sigterm"), "no SIGTERM marker in: {text}");

    // Whatever it waits for now, explain says it in words.
    let explained = s.ctl_json(&alpha, &["job", "explain", &borrower])?;
    assert!(!explained["explanation"]
        .as_str()
        .unwrap_or_default()
        .is_empty());

    s.ctl_json(&beta, &["job", "cancel", &owner])?;
    wait_job(&s, &beta, &owner, "cancelled", |j| {
        j["state"] == "cancelled"
    })?;
    Ok(())
}

#[test]
fn invalid_policy_and_job_specs_are_refused_and_change_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let _agent = s.agent("gpu-c1", "2xA100-80GB", &dir.path().join("agent"))?;
    eventually("the agent to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.len() == 1).then_some(())
    })?;
    let gamma = tenant(&s, "gamma")?;
    let refused = |token: &str, args: &[&str], want: &str| {
        let out = s.ctl(token, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    refused(
        ADMIN_TOKEN,
        &[
            "tenant",
            "set-quota",
            "gamma",
            "--class",
            "A100",
            "--guaranteed=-3",
        ],
        "not a number of GPUs",
    );
    refused(
        ADMIN_TOKEN,
        &["node", "label", "gpu-c1", "--owner", "nobody"],
        "tenant 'nobody' does not exist",
    );
    refused(
        ADMIN_TOKEN,
        &["node", "label", "gpu-c1", "--data-level", "7"],
        "data_level 7 does not exist",
    );
    refused(
        &gamma,
        &[
            "job",
            "submit",
            "--gpus",
            "2",
            "--gpu-fraction",
            "250",
            "--",
            "true",
        ],
        "gpu_fraction needs gpus: 1",
    );
    refused(
        &gamma,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--data-level",
            "2",
            "--",
            "true",
        ],
        "no node is certified for data level 2",
    );
    refused(
        &gamma,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--gpu-class",
            "H100",
            "--",
            "true",
        ],
        "no node has GPUs of class H100",
    );
    // Nothing changed: no jobs, default quota, unlabelled node.
    let jobs = s.ctl_json(&gamma, &["job", "list"])?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "{jobs}");
    let shown = s.ctl_json(ADMIN_TOKEN, &["tenant", "show", "gamma"])?;
    assert_eq!(
        shown["classes"].as_array().map(Vec::len),
        Some(0),
        "{shown}"
    );
    Ok(())
}
