//! GPU health and energy end to end, with the real binaries: a fake XID
//! injected on a simulated GPU that runs a job gets the job requeued onto
//! another GPU, keeps the failed GPU out of placement until it is reset and
//! an admin clears it, and shows why in `node list`; every job's GPU time
//! and energy (from the simulated power curve) reach `job get`; the agent's
//! `/metrics` shows the same, and its telemetry summary reaches `node list`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edupool_tests::{bin, eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "gpu-node-1";

fn append(path: &Path, line: &str) -> Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")?;
    Ok(())
}

fn job(s: &Scheduler, token: &str, id: &str) -> Result<Value> {
    s.ctl_json(token, &["job", "get", id])
}

fn gpu(s: &Scheduler, uuid: &str) -> Result<Value> {
    let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"])?;
    nodes[0]["gpus"]
        .as_array()
        .and_then(|gpus| gpus.iter().find(|g| g["uuid"] == uuid))
        .cloned()
        .with_context(|| format!("GPU {uuid} in {nodes}"))
}

/// `edupoolctl --output table <args>`, which must succeed.
fn ctl_table(s: &Scheduler, token: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("edupoolctl"))
        .args(["--endpoint", &s.endpoint(), "--output", "table"])
        .arg("--ca-cert")
        .arg(&s.ca_cert)
        .args(args)
        .env("EDUPOOL_TOKEN", token)
        .output()?;
    if !out.status.success() {
        bail!(
            "edupoolctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// One `GET /metrics`, over a plain HTTP/1.1 connection.
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head:?}");
    }
    Ok(body.to_owned())
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_gpu_fault_requeues_its_job_and_keeps_the_gpu_out_until_cleared() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let faults = dir.path().join("faults");
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let faults_arg = faults.to_str().context("a UTF-8 path")?;
    let (_agent, metrics) = s.agent_with(
        NODE,
        "2xA100-80GB",
        &dir.path().join("agent"),
        &[
            "--simulate-faults",
            faults_arg,
            "--metrics-listen",
            "127.0.0.1:0",
            "--telemetry-interval",
            "200ms",
        ],
    )?;
    let metrics = metrics.context("the metrics address")?;
    let nodes = eventually("the agent to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes[0]["status"] == "ready").then_some(nodes)
    })?;
    let uuids: Vec<String> = nodes[0]["gpus"]
        .as_array()
        .context("gpus")?
        .iter()
        .map(|g| g["uuid"].as_str().unwrap_or_default().to_owned())
        .collect();
    let (first, second) = (&uuids[0], &uuids[1]);
    // The topology the agent reports reaches the scheduler.
    let gpus = &nodes[0]["gpus"];
    assert_eq!(gpus[0]["compute_capability"], "8.0");
    assert_eq!(
        gpus[0]["nvlink_peers"],
        serde_json::json!([gpus[1]["pci_bus_id"]])
    );
    // ... and becomes the peer indexes the planner uses.
    assert_eq!(gpus[0]["peers"], serde_json::json!([1]));
    assert_eq!(gpus[1]["peers"], serde_json::json!([0]));

    let zju = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?["token"]
        .as_str()
        .context("a token")?
        .to_owned();
    // The first attempt waits to be stopped; the second ends by itself.
    let submitted = s.ctl_json(
        &zju,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--",
            "sh",
            "-c",
            r#"if [ "$EDUPOOL_ATTEMPT" = 1 ]; then sleep 60; else sleep 1; fi"#,
        ],
    )?;
    let id = submitted["id"].as_str().context("a job id")?.to_owned();
    let running = eventually("the job to run", WAIT, || {
        let j = job(&s, &zju, &id).ok()?;
        (j["state"] == "running").then_some(j)
    })?;
    assert_eq!(running["gpu_uuids"], serde_json::json!([first]));

    append(&faults, "0 xid 79")?;

    // Requeued onto the other GPU, and done there.
    let done = eventually("the job to succeed on the other GPU", WAIT, || {
        let j = job(&s, &zju, &id).ok()?;
        (j["state"] == "succeeded").then_some(j)
    })?;
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["gpu_uuids"], serde_json::json!([second]));
    let gpu_seconds = done["gpu_seconds"].as_f64().context("gpu_seconds")?;
    let energy = done["energy_joules"].as_f64().context("energy_joules")?;
    // Both runs count: at least the second's one second of sleep.
    assert!(gpu_seconds >= 1.0, "gpu_seconds {gpu_seconds}");
    // A simulated A100 draws 60 to 400 W.
    assert!(
        energy > 0.0 && energy <= 400.0 * gpu_seconds,
        "energy_joules {energy} for {gpu_seconds} GPU-seconds"
    );
    let detail = ctl_table(&s, &zju, &["job", "get", &id])?;
    assert!(
        detail.contains("GPU-hours") && detail.contains("kWh"),
        "{detail}"
    );

    // The failed GPU is marked, with its reason, in JSON and in the table.
    let failed = gpu(&s, first)?;
    assert_eq!(failed["healthy"], false);
    assert_eq!(
        failed["health_reason"],
        "XID 79: GPU has fallen off the bus"
    );
    assert_eq!(failed["reset_seen"], false);
    let table = ctl_table(&s, ADMIN_TOKEN, &["node", "list"])?;
    assert!(
        table.contains("2 (1 unhealthy)")
            && table.contains(&format!(
                "{first}  0      needs a reset  XID 79: GPU has fallen off the bus"
            )),
        "{table}"
    );

    // A new job goes to the healthy GPU, though the failed one has the
    // lower index and first fit would take it.
    let next = s.ctl_json(&zju, &["job", "submit", "--gpus", "1", "--", "true"])?;
    let next_id = next["id"].as_str().context("a job id")?.to_owned();
    let next_done = eventually("the next job to succeed", WAIT, || {
        let j = job(&s, &zju, &next_id).ok()?;
        (j["state"] == "succeeded").then_some(j)
    })?;
    assert_eq!(next_done["gpu_uuids"], serde_json::json!([second]));

    // An admin cannot clear it before it is reset.
    let refused = s.ctl(ADMIN_TOKEN, &["node", "clear-gpu", NODE, first]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("reset the GPU first"), "{error}");

    // The agent's metrics show the fault and the session.
    let text = scrape(metrics)?;
    let labels = [
        ("node", NODE),
        ("gpu_uuid", first.as_str()),
        ("model", "A100-80GB"),
    ];
    assert_eq!(
        metric(&text, "edupool_gpu_xid_errors_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "edupool_agent_session_connected", &[("node", NODE)]),
        Some(1.0)
    );
    let text = eventually("telemetry after the fault", WAIT, || {
        let text = scrape(metrics).ok()?;
        (metric(&text, "edupool_gpu_healthy", &labels) == Some(0.0)).then_some(text)
    })?;
    let energy_total = metric(&text, "edupool_gpu_energy_joules_total", &labels);
    assert!(energy_total.is_some_and(|j| j > 0.0), "{text}");

    // The agent's telemetry summary reaches the scheduler.
    let summary = eventually("a telemetry summary in node list", WAIT, || {
        let g = gpu(&s, second).ok()?;
        g["telemetry"].is_object().then(|| g["telemetry"].clone())
    })?;
    let power = summary["power_watts"].as_f64().context("power_watts")?;
    assert!((60.0..=400.0).contains(&power), "{summary}");
    assert!(summary["energy_joules"].as_f64() > Some(0.0), "{summary}");

    // Reset: the agent reports it healthy, the scheduler still waits for
    // the admin, and then the GPU is back.
    append(&faults, "0 reset")?;
    eventually("the reset to reach the scheduler", WAIT, || {
        let g = gpu(&s, first).ok()?;
        (g["reset_seen"] == true).then_some(())
    })?;
    assert_eq!(gpu(&s, first)?["healthy"], false);
    s.ctl_json(ADMIN_TOKEN, &["node", "clear-gpu", NODE, first])?;
    let cleared = gpu(&s, first)?;
    assert_eq!(cleared["healthy"], true);
    assert_eq!(cleared["health_reason"], Value::Null);
    Ok(())
}

/// `edupool-agent inventory` with `args`: its exit status, stdout, stderr.
fn inventory(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(bin("edupool-agent"))
        .args(["inventory", "--node-name", "n1"])
        .args(args)
        .env("RUST_LOG", "warn")
        // No driver library anywhere on this path.
        .env("EDUPOOL_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn inventory_shows_health_and_never_crashes_without_a_driver() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let faults = dir.path().join("faults");
    append(&faults, "1 ecc 2")?;
    append(&faults, "0 thermal")?;
    append(&faults, "2 remap")?;
    let faults_arg = faults.to_str().context("a UTF-8 path")?;
    let (ok, json, _) = inventory(&[
        "--simulate-gpus",
        "3xA100-80GB",
        "--simulate-faults",
        faults_arg,
        "--output",
        "json",
    ])?;
    assert!(ok);
    let report: Value = serde_json::from_str(&json)?;
    assert_eq!(report["backend"], "simulated");
    let gpus = report["gpus"].as_array().context("gpus")?;
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpus[0]["compute_capability"], "8.0");
    assert_eq!(gpus[0]["power_limit_watts"], 400.0);
    assert_eq!(
        gpus[0]["nvlink_peers"],
        serde_json::json!([gpus[1]["pci_bus_id"], gpus[2]["pci_bus_id"]])
    );
    assert!(gpus[0]["telemetry"]["power_watts"].as_f64() >= Some(60.0));
    // Throttling is shown but is no fault; uncorrectable ECC errors are.
    assert_eq!(gpus[0]["healthy"], true);
    assert_eq!(
        gpus[0]["telemetry"]["throttle_reasons"],
        serde_json::json!(["hw_thermal_slowdown"])
    );
    assert_eq!(gpus[1]["healthy"], false);
    assert_eq!(gpus[1]["health_reason"], "uncorrectable ECC error");
    assert_eq!(gpus[1]["telemetry"]["ecc_volatile_uncorrected"], 2);
    // An A100 remaps rows: one pending remapping needs a reset.
    assert_eq!(gpus[2]["healthy"], false);
    assert_eq!(
        gpus[2]["health_reason"],
        "memory rows are pending remapping; the GPU needs a reset"
    );
    assert_eq!(
        gpus[2]["telemetry"]["remapped_rows"],
        serde_json::json!({"correctable": 0, "uncorrectable": 1, "pending": true, "failed": false})
    );

    // Without the driver: one clear line and a failure, or with `auto` the
    // simulated GPUs.
    let (ok, _, err) = inventory(&["--gpus", "nvml"])?;
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/libnvidia-ml.so.1")
            && err.contains("is the NVIDIA driver installed?"),
        "{err}"
    );
    let (ok, table, err) = inventory(&["--gpus", "auto", "--simulate-gpus", "1xT4-16GB"])?;
    assert!(ok, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("using simulated GPUs 1xT4-16GB instead"),
        "{err}"
    );
    assert!(table.starts_with("node n1: 1 GPUs (simulated"), "{table}");
    Ok(())
}
