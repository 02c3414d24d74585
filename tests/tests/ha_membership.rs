//! Backup and restore, then growing the restored cluster at run time:
//! `cluster snapshot` to a file, `serve --restore-from` into an empty data
//! directory, `cluster add-member` of replicas started with `--join`,
//! `cluster transfer-leader` and `cluster remove-member`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Result};
use edupool_tests::cluster::Cluster;
use edupool_tests::tls::{self, TestPki};
use edupool_tests::{bin, eventually, Proc, Scheduler, ADMIN_TOKEN, AGENT_TOKEN};

const WAIT: Duration = Duration::from_secs(30);

/// Picks a free loopback port: a joining replica must know the address it
/// is added under before it starts.
fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Replica `id` on `listen`, with a peer:<id> certificate from the test's
/// CA (in the data directory's parent).
fn serve(data_dir: &Path, listen: SocketAddr, id: u64, args: &[&str]) -> Result<Proc> {
    let pki = TestPki::open(data_dir.parent().expect("a parent"))?;
    tls::trust(&listen.to_string(), &pki.ca_cert());
    let mut child = Command::new(bin("edupool-scheduler"))
        .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(["--id", &id.to_string()])
        .args(pki.serve_args(id)?)
        .args(args)
        .env("EDUPOOL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .env("RUST_LOG", "warn,raft=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("the replica exited before listening"))??;
        if line.starts_with("edupool-scheduler listening on ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Proc::new(child, "replica"))
}

#[test]
fn a_backup_restores_into_a_new_cluster_that_grows_to_three() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // An existing single-replica pool with a tenant in it.
    let old = Scheduler::start(&dir.path().join("old"))?;
    Cluster::ctl_json(&old.endpoint(), ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let backup = dir.path().join("pool.backup");
    let snap = Cluster::ctl_json(
        &old.endpoint(),
        ADMIN_TOKEN,
        &[
            "cluster",
            "snapshot",
            "--out",
            backup.to_str().expect("utf-8 path"),
        ],
    )?;
    assert!(snap["index"].as_u64().unwrap_or(0) > 0);
    drop(old);

    // Restore into a fresh data directory as replica 1.
    let a1 = free_addr()?;
    let _r1 = serve(
        &dir.path().join("r1"),
        a1,
        1,
        &[
            "--peers",
            &format!("1={a1}"),
            "--restore-from",
            backup.to_str().unwrap(),
        ],
    )?;
    let e1 = format!("http://{a1}");
    let tenants = Cluster::ctl_json(&e1, ADMIN_TOKEN, &["tenant", "list"])?;
    assert_eq!(tenants[0]["name"], "zju", "the backup's state is back");
    // Restoring over a data directory that holds a log is refused.
    let again = Command::new(bin("edupool-scheduler"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("r1"))
        .args(TestPki::open(dir.path())?.serve_args(1)?)
        .args(["--restore-from", backup.to_str().unwrap()])
        .env("EDUPOOL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("EDUPOOL_AGENT_TOKEN", AGENT_TOKEN)
        .output()?;
    assert!(!again.status.success());

    // Grow to three: each new replica starts with --join, then is added.
    let mut procs = Vec::new();
    let mut endpoints = vec![e1.clone()];
    for id in [2u64, 3] {
        let addr = free_addr()?;
        procs.push(serve(
            &dir.path().join(format!("r{id}")),
            addr,
            id,
            &["--join"],
        )?);
        let v = Cluster::ctl_json(
            &e1,
            ADMIN_TOKEN,
            &["cluster", "add-member", &id.to_string(), &addr.to_string()],
        )?;
        let member = v["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id))
            .cloned()
            .expect("the new member is listed");
        assert_eq!(member["voter"], true);
        endpoints.push(format!("http://{addr}"));
    }
    let all = endpoints.join(",");

    // Bad requests get a precise answer and change nothing.
    let refused = |args: &[&str], token: &str, says: &str| {
        let out = Cluster::ctl_at(&all, token, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(
        &["cluster", "add-member", "0", "127.0.0.1:1"],
        ADMIN_TOKEN,
        "replica ids start at 1",
    );
    refused(
        &["cluster", "add-member", "5", "nowhere"],
        ADMIN_TOKEN,
        "is not a host:port address",
    );
    refused(
        &["cluster", "remove-member", "9"],
        ADMIN_TOKEN,
        "replica 9 is not a member",
    );
    refused(
        &["cluster", "transfer-leader", "9"],
        ADMIN_TOKEN,
        "not a voter",
    );
    let tenant = Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "fdu"])?;
    let fdu = tenant["token"].as_str().expect("a token").to_string();
    refused(
        &["cluster", "snapshot", "--out", "/dev/null"],
        &fdu,
        "permission denied",
    );
    let status = Cluster::ctl_json(&all, &fdu, &["cluster", "status"])?;
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    // The new replicas have the restored state.
    let e3 = endpoints[2].clone();
    eventually("replica 3 to have the tenant", WAIT, || {
        let v = Cluster::ctl_json(&e3, ADMIN_TOKEN, &["--stale-ok", "tenant", "list"]).ok()?;
        v.as_array()?
            .iter()
            .any(|t| t["name"] == "zju")
            .then_some(())
    })?;

    // Hand leadership to replica 3, then remove replica 1.
    let v = Cluster::ctl_json(&all, ADMIN_TOKEN, &["cluster", "transfer-leader", "3"])?;
    assert_eq!(v["leader_id"], 3, "{v}");
    let v = Cluster::ctl_json(&all, ADMIN_TOKEN, &["cluster", "remove-member", "1"])?;
    let ids: Vec<u64> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![2, 3]);
    // Two replicas still make a quorum of two: writes go on.
    Cluster::ctl_json(&all, ADMIN_TOKEN, &["tenant", "create", "sjtu"])?;
    Ok(())
}
