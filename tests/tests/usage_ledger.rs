//! The usage ledger across a leader change, with real processes: every
//! run is recorded exactly once on every replica, a tenant reads only its
//! own usage, bad input is refused, and a hard budget stops new jobs.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use edupool_tests::cluster::Cluster;
use edupool_tests::{eventually, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const FROM: &str = "2000-01-01";
const TO: &str = "2100-01-01";

fn submit(endpoints: &str, token: &str, name: &str) -> Result<String> {
    let v = Cluster::ctl_json(
        endpoints,
        token,
        &["job", "submit", "--gpus", "1", "--name", name, "--", "true"],
    )?;
    Ok(v["id"].as_str().expect("a job id").to_string())
}

/// Waits until every job of `ids` has succeeded.
fn wait_succeeded(endpoints: &str, token: &str, ids: &[String]) -> Result<()> {
    eventually("the jobs to succeed", WAIT, || {
        let v = Cluster::ctl_json(endpoints, token, &["job", "list"]).ok()?;
        let done: BTreeSet<String> = v
            .as_array()?
            .iter()
            .filter(|j| j["state"] == "succeeded")
            .filter_map(|j| j["id"].as_str().map(str::to_string))
            .collect();
        ids.iter().all(|id| done.contains(id)).then_some(())
    })
}

fn export(endpoints: &str, token: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let mut args = extra.to_vec();
    args.extend(["usage", "export", "--from", FROM, "--to", TO]);
    let v = Cluster::ctl_json(endpoints, token, &args)?;
    Ok(v.as_array().expect("a list").clone())
}

/// Each entry's GPU time is its run time x its GPU thousandths.
fn check_exact(entries: &[Value]) {
    for e in entries {
        let ms = e["end_ms"].as_i64().unwrap() - e["start_ms"].as_i64().unwrap();
        let milli = e["gpus"].as_u64().unwrap() * e["milli_per_gpu"].as_u64().unwrap();
        assert_eq!(
            e["gpu_milli_ms"].as_u64().unwrap(),
            ms as u64 * milli,
            "{e}"
        );
    }
}

#[test]
fn usage_survives_a_leader_change_exactly_once_and_stays_private() -> Result<()> {
    let mut c = Cluster::start(3, &[])?;
    let work = tempfile::tempdir()?;
    let _agent = c.agent("n1", "2xA100-80GB", work.path())?;
    c.leader(WAIT)?;
    let all = c.endpoints();
    let zju = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let zju = zju["token"].as_str().expect("a token").to_string();
    let hdu = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "hdu"])?;
    let hdu = hdu["token"].as_str().expect("a token").to_string();
    Cluster::wait_for_nodes(&all, 1, WAIT)?;
    Cluster::ctl_json(
        &all,
        ADMIN_TOKEN,
        &[
            "price",
            "set",
            "--currency",
            "CNY",
            "--gpu-hour",
            "A100-80GB=3.6",
        ],
    )?;

    // Bad input is refused with a precise error and changes nothing.
    let bad = Cluster::ctl_at(
        &all,
        ADMIN_TOKEN,
        &["price", "set", "--gpu-hour", "H100-80GB=1"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no node in the pool has GPU model 'H100-80GB'"),
        "{err}"
    );
    let backwards = Cluster::ctl_at(
        &all,
        ADMIN_TOKEN,
        &[
            "usage",
            "report",
            "--from",
            "2026-12-01",
            "--to",
            "2026-11-01",
        ],
    );
    let err = String::from_utf8_lossy(&backwards.stderr);
    assert!(err.contains("the range starts after it ends"), "{err}");
    let prices = Cluster::ctl_json(&all, ADMIN_TOKEN, &["price", "list"])?;
    assert_eq!(prices.as_array().unwrap().len(), 1, "{prices}");

    let mut ids = vec![];
    for n in 0..3 {
        ids.push(submit(&all, &zju, &format!("before-{n}"))?);
    }
    wait_succeeded(&all, &zju, &ids)?;
    let before = export(&all, ADMIN_TOKEN, &[])?;
    assert_eq!(before.len(), 3);

    // The leader dies; a new one takes over and more jobs run.
    let leader = c.leader(WAIT)?;
    c.kill9(leader);
    c.leader(WAIT)?;
    for n in 0..2 {
        ids.push(submit(&all, &zju, &format!("after-{n}"))?);
    }
    wait_succeeded(&all, &zju, &ids)?;
    c.restart(leader)?;
    c.converged(WAIT)?;

    // Every replica holds the same ledger: one entry per run, none lost or
    // repeated, the first ones unchanged.
    for i in c.ids() {
        let entries = export(&c.endpoint(i), ADMIN_TOKEN, &["--stale-ok"])?;
        let jobs: Vec<&str> = entries.iter().map(|e| e["job"].as_str().unwrap()).collect();
        let unique: BTreeSet<&str> = jobs.iter().copied().collect();
        assert_eq!(jobs.len(), ids.len(), "replica {i}: {jobs:?}");
        assert_eq!(unique, ids.iter().map(String::as_str).collect());
        let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=ids.len() as u64).collect::<Vec<_>>());
        assert_eq!(&entries[..3], &before[..], "replica {i}");
        check_exact(&entries);
    }

    // A tenant reads only its own usage.
    let peek = Cluster::ctl_at(
        &all,
        &hdu,
        &[
            "usage", "report", "--tenant", "zju", "--from", FROM, "--to", TO,
        ],
    );
    assert!(!peek.status.success());
    let err = String::from_utf8_lossy(&peek.stderr);
    assert!(err.contains("may read only its own usage"), "{err}");
    assert!(export(&all, &hdu, &[])?.is_empty());
    let own = Cluster::ctl_json(&all, &zju, &["usage", "report", "--from", FROM, "--to", TO])?;
    assert_eq!(own["total"]["runs"], ids.len() as u64, "{own}");

    // Over a hard budget, only scavenger jobs are accepted.
    Cluster::ctl_json(&all, ADMIN_TOKEN, &["budget", "set", "zju", "--hard", "0"])?;
    let refused = Cluster::ctl_at(
        &all,
        &zju,
        &[
            "job", "submit", "--gpus", "1", "--name", "over", "--", "true",
        ],
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("tenant 'zju' is over its hard budget"),
        "{err}"
    );
    Ok(())
}
