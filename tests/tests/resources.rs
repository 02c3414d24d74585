//! Host resources end to end, with the real binaries: a pool of GPU nodes
//! and a CPU-only node, each reporting its CPU and memory after the
//! system reserve, receives GPU and CPU-only jobs with CPU and memory
//! requests. Whatever the planner chooses, the committed state never
//! over-commits a node in any dimension; a job that fits nowhere now says
//! which dimension is short and on how many nodes; bad input is refused
//! as INVALID_ARGUMENT naming the field, and nothing is written.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;

/// (name, --simulate-gpus, --simulate-cpu, --simulate-memory): with the
/// default reserve (1 core, 2 GiB) they offer 7 cores / 32 GiB, 3 cores /
/// 16 GiB and 4 cores / 8 GiB. Only gpu-a has A100s; only gpu-b V100s.
const NODES: [(&str, &str, &str, &str); 3] = [
    ("gpu-a", "2xA100-80GB", "8", "34GiB"),
    ("gpu-b", "1xV100-16GB,1xV100-32GB", "4", "18GiB"),
    ("cpu-1", "none", "5", "10GiB"),
];

fn submit(s: &Scheduler, token: &str, args: &[&str]) -> Result<String> {
    let all = [&["job", "submit"], args, &["--", "sleep", "60"]].concat();
    let v = s.ctl_json(token, &all)?;
    Ok(v["id"].as_str().expect("an id").to_string())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Checks the committed state: per node, what the placed jobs ask for
/// (from the job list) is within what the node offers, and equals what
/// the node list says is no longer free. Returns the placed jobs' nodes.
fn no_node_is_over_committed(s: &Scheduler) -> Result<BTreeMap<String, String>> {
    let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"])?;
    let jobs = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;
    let mut held: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut placed = BTreeMap::new();
    for j in jobs.as_array().expect("a list") {
        let Some(node) = j["node"].as_str() else {
            continue;
        };
        if !matches!(j["state"].as_str(), Some("assigned" | "running")) {
            continue;
        }
        let h = held.entry(node.to_string()).or_default();
        h.0 += u(&j["gpus"]);
        h.1 += u(&j["cpu_millicores"]);
        h.2 += u(&j["memory_bytes"]);
        placed.insert(j["id"].as_str().unwrap_or("").to_string(), node.to_string());
    }
    for n in nodes.as_array().expect("a list") {
        let name = n["name"].as_str().unwrap_or("");
        let (gpus, cpu, memory) = held.get(name).copied().unwrap_or_default();
        let all_gpus = n["gpus"].as_array().map_or(0, Vec::len) as u64;
        assert!(gpus <= all_gpus, "{name}: {gpus} GPUs held of {all_gpus}");
        assert!(
            cpu <= u(&n["cpu_millicores"]),
            "{name}: CPU over-committed: {n}"
        );
        assert!(
            memory <= u(&n["memory_bytes"]),
            "{name}: memory over-committed: {n}"
        );
        assert_eq!(
            u(&n["cpu_millicores"]) - u(&n["free_cpu_millicores"]),
            cpu,
            "{name}: {n}"
        );
        assert_eq!(
            u(&n["memory_bytes"]) - u(&n["free_memory_bytes"]),
            memory,
            "{name}: {n}"
        );
    }
    Ok(placed)
}

#[test]
fn mixed_nodes_are_never_over_committed_and_a_job_that_fits_nowhere_says_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let mut agents = vec![];
    for (name, gpus, cpu, memory) in NODES {
        let extra = ["--simulate-cpu", cpu, "--simulate-memory", memory];
        let (agent, _) = s.agent_with(name, gpus, &dir.path().join(name), &extra)?;
        agents.push(agent);
    }
    let nodes = eventually("three ready nodes", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        let ready = nodes.as_array()?.iter().filter(|n| n["status"] == "ready");
        (ready.count() == 3).then_some(nodes)
    })?;
    let offered: BTreeMap<&str, (u64, u64)> = nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or("");
            (name, (u(&n["cpu_millicores"]), u(&n["memory_bytes"])))
        })
        .collect();
    let want = BTreeMap::from([
        ("cpu-1", (4_000, 8 * GIB)),
        ("gpu-a", (7_000, 32 * GIB)),
        ("gpu-b", (3_000, 16 * GIB)),
    ]);
    assert_eq!(offered, want, "{nodes}");

    let token = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "physics"])?["token"]
        .as_str()
        .expect("a token")
        .to_string();
    // More asked for than fits at once, in every dimension.
    let big_gpu = submit(
        &s,
        &token,
        &["--gpus", "1", "--cpu", "4", "--memory", "16GiB"],
    )?;
    let v100 = submit(
        &s,
        &token,
        &[
            "--gpus",
            "1",
            "--gpu-model",
            "V100-32GB,V100-16GB",
            "--cpu",
            "2",
            "--memory",
            "8GiB",
        ],
    )?;
    let mut cpu_jobs = vec![];
    for (cpu, memory) in [
        ("3", "4GiB"),
        ("2", "4GiB"),
        ("1", "2GiB"),
        ("500m", "1GiB"),
    ] {
        cpu_jobs.push(submit(
            &s,
            &token,
            &["--gpus", "0", "--cpu", cpu, "--memory", memory],
        )?);
    }
    let all: Vec<&String> = [&big_gpu, &v100].into_iter().chain(&cpu_jobs).collect();
    // Settled: every job placed, or the planner has looked at it and
    // left it pending.
    let placed = eventually("the jobs to settle", WAIT, || {
        let placed = no_node_is_over_committed(&s).ok()?;
        let settled = all.iter().all(|id| {
            placed.contains_key(*id)
                || s.ctl_json(&token, &["job", "explain", id])
                    .is_ok_and(|e| e.to_string().contains("capacity"))
        });
        settled.then_some(placed)
    })?;
    assert_eq!(
        placed.get(&v100).map(String::as_str),
        Some("gpu-b"),
        "{placed:?}"
    );
    assert!(placed.contains_key(&big_gpu), "{placed:?}");
    assert!(placed.len() >= 5, "{placed:?}");

    // The second A100 is free, but gpu-a has too little CPU left for this
    // one, and no other node has an A100.
    let stuck = submit(
        &s,
        &token,
        &[
            "--gpus",
            "1",
            "--gpu-class",
            "A100",
            "--cpu",
            "6",
            "--memory",
            "4GiB",
        ],
    )?;
    let why = eventually("the stuck job's explanation", WAIT, || {
        let e = s.ctl_json(&token, &["job", "explain", &stuck]).ok()?;
        let text = e.to_string();
        text.contains("CPU: 1 of 1 node lacks 6 CPU cores free per task")
            .then_some(text)
    })?;
    assert!(!why.contains("memory:"), "{why}");
    no_node_is_over_committed(&s)?;

    // Bad input: refused as INVALID_ARGUMENT naming the field (and the
    // largest node), and nothing is written.
    let before = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;
    for (args, says) in [
        (
            vec!["--gpus", "1", "--memory", "1TiB"],
            "memory_bytes: it asks for 1024 GiB per task, more than any node has; the largest node (gpu-a) has 32 GiB allocatable",
        ),
        (
            vec!["--gpus", "1", "--gpu-model", "A100-80GB,H100-80GB"],
            "gpu_models: no node has GPUs of model H100-80GB",
        ),
        (
            vec!["--gpus", "0", "--cpu", "64"],
            "cpu_millicores: it asks for 64 CPU cores per task",
        ),
    ] {
        let all = [&["job", "submit"], &args[..], &["--", "true"]].concat();
        let out = s.ctl(&token, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(says) && err.contains("invalid argument"),
            "{args:?}: {err}"
        );
    }
    let after = s.ctl_json(ADMIN_TOKEN, &["job", "list"])?;
    assert_eq!(
        before.as_array().map(Vec::len),
        after.as_array().map(Vec::len)
    );

    // A finished job gives its CPU and memory back.
    s.ctl_json(&token, &["job", "cancel", &big_gpu])?;
    eventually("gpu-a's CPU to be free again", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        let a = nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == "gpu-a")?
            .clone();
        let held_by_others: u64 = no_node_is_over_committed(&s)
            .ok()?
            .iter()
            .filter(|(_, n)| *n == "gpu-a")
            .count() as u64;
        (held_by_others > 0 || u(&a["free_cpu_millicores"]) == 7_000).then_some(())
    })?;
    no_node_is_over_committed(&s)?;
    drop(agents);
    Ok(())
}
