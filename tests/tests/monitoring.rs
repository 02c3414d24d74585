//! Monitoring, checked against a real Prometheus: the shipped scrape
//! config and rules pass `promtool`; live scrapes of the scheduler and of
//! an agent pass `promtool check metrics`; a Prometheus scraping a pool
//! (the scheduler and its agents) that ran a workload has data for every
//! expression of every dashboard, recording rule and alert rule in
//! deploy/; and killing an agent fires the agent-lost alert.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package, which
//! .ci/run installs). In CI, or with `EDUPOOL_REQUIRE_PROMETHEUS=1`, their
//! absence fails; elsewhere the tests say they skipped.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edupool_tests::prometheus::{http_get, promtool, tools_available, Prometheus};
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Metrics that components this test does not start export, with who
/// exports them. An expression that uses one is checked once Prometheus
/// has the metric; until then it is skipped, and the test says so. Every
/// component is started today (the scheduler and the agents, both with
/// their /metrics), so nothing is awaited and every expression is checked.
const AWAITED: &[(&str, &str)] = &[];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rule_files() -> Vec<PathBuf> {
    let dir = deploy().join("prometheus/rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus/rules exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_config_and_rules_pass_promtool() -> Result<()> {
    if !tools_available() {
        return Ok(());
    }
    let config = deploy().join("prometheus/prometheus.yml");
    promtool(&["check", "config", &config.to_string_lossy()], None)?;
    let rules: Vec<String> = rule_files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    promtool(&args, None)?;
    Ok(())
}

#[test]
fn prometheus_has_data_for_every_expression_and_agent_loss_fires() -> Result<()> {
    if !tools_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start_with_metrics(&dir.path().join("scheduler"))?;
    let metrics = s.metrics_addr.context("the scheduler serves metrics")?;
    let serve = ["--metrics-listen", "127.0.0.1:0"];
    let (_agent_a, metrics_a) =
        s.agent_with("node-a", "2xA100-80GB", &dir.path().join("node-a"), &serve)?;
    let (mut agent_b, metrics_b) =
        s.agent_with("node-b", "2xV100-32GB", &dir.path().join("node-b"), &serve)?;
    let metrics_a = metrics_a.context("node-a's agent serves metrics")?;
    let metrics_b = metrics_b.context("node-b's agent serves metrics")?;
    wait_nodes_ready(&s, 2)?;
    let jobs = run_workload(&s)?;

    // The live scrape passes Prometheus's own lint, and says what happened.
    let (status, scrape) = http_get(metrics, "/metrics")?;
    assert_eq!(status, 200);
    promtool(&["check", "metrics"], Some(&scrape))?;
    let text = String::from_utf8(scrape)?;
    let api = "edupool_api_requests_total";
    let unknown_job = [
        ("service", "edupool.v1.JobService"),
        ("method", "GetJob"),
        ("code", "NOT_FOUND"),
    ];
    assert_eq!(sample(&text, api, &unknown_job), Some(1.0), "{text}");
    let failed = [("from", "running"), ("to", "failed"), ("priority", "batch")];
    assert_eq!(
        sample(&text, "edupool_job_transitions_total", &failed),
        Some(1.0)
    );
    let in_use = "edupool_tenant_gpus_in_use";
    assert_eq!(
        sample(&text, in_use, &[("tenant", "hdu"), ("class", "A100")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, in_use, &[("tenant", "zju"), ("class", "V100")]),
        Some(2.0)
    );
    let waiting = [("tenant", "hdu"), ("priority", "batch")];
    assert_eq!(
        sample(&text, "edupool_tenant_pending_gpus", &waiting),
        Some(2.0)
    );
    let busy = [
        ("class", "V100"),
        ("site", "default"),
        ("owner", "none"),
        ("node", "node-b"),
    ];
    assert_eq!(
        sample(&text, "edupool_pool_gpus_allocated", &busy),
        Some(2.0)
    );

    // An agent's scrape passes the lint too.
    let (status, agent_scrape) = http_get(metrics_a, "/metrics")?;
    assert_eq!(status, 200);
    promtool(&["check", "metrics"], Some(&agent_scrape))?;
    let agent_text = String::from_utf8(agent_scrape)?;
    assert!(
        agent_text.contains("edupool_gpu_info{") && agent_text.contains("node=\"node-a\""),
        "{agent_text}"
    );

    let prom_dir = dir.path().join("prometheus");
    let targets: Vec<(&str, Vec<SocketAddr>)> = vec![
        ("edupool-scheduler", vec![metrics]),
        ("edupool-agent", vec![metrics_a, metrics_b]),
    ];
    let config = write_test_config(&prom_dir, &targets)?;
    let prom = Prometheus::start(&config, &prom_dir)?;

    let checks = expressions()?;
    let awaited = awaited_names(&checks);
    let skipped = wait_for_data(&prom, &checks, &awaited)?;
    println!(
        "{} expressions have data; {} skipped until their metrics exist:",
        checks.len() - skipped.len(),
        skipped.len()
    );
    for line in &skipped {
        println!("  skipped {line}");
    }
    assert!(skipped.is_empty(), "skipped: {skipped:?}");

    // Cancel what runs (its processes must not outlive the test), then
    // lose node-b's agent.
    for (token, id) in &jobs.to_cancel {
        let out = s.ctl(token, &["job", "cancel", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (token, id) in &jobs.to_cancel {
        eventually(&format!("{id} to end"), WAIT, || {
            let j = s.ctl_json(token, &["job", "get", id]).ok()?;
            (j["state"] == "cancelled").then_some(())
        })?;
    }
    agent_b.kill9();
    eventually(
        "the EdupoolAgentLost alert to fire for node-b",
        WAIT,
        || {
            let alerts = prom.alerts().ok()?;
            alerts
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "EdupoolAgentLost"
                        && a["labels"]["node"] == "node-b"
                        && a["state"] == "firing"
                })
                .then_some(())
        },
    )
    .with_context(|| format!("prometheus log:\n{}", prom.log()))?;
    // Only the lost node is named.
    let firing = prom.alerts()?;
    assert!(
        !firing
            .iter()
            .any(|a| a["labels"]["alertname"] == "EdupoolAgentLost"
                && a["labels"]["node"] == "node-a")
    );
    Ok(())
}

/// The value of the sample of `name` with exactly `labels`, from a scrape
/// in the text format.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (inside, value) = rest.split_once("} ")?;
        let have: BTreeSet<String> = inside.split(',').map(str::to_string).collect();
        (have == want).then(|| value.trim().parse().ok())?
    })
}

fn wait_nodes_ready(s: &Scheduler, n: usize) -> Result<()> {
    eventually("agents to connect", WAIT, || {
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == n).then_some(())
    })
}

struct Workload {
    /// (tenant token, job id) of jobs still running or waiting.
    to_cancel: Vec<(String, String)>,
}

/// Two tenants; jobs that succeed, fail, run and wait; a call that fails.
fn run_workload(s: &Scheduler) -> Result<Workload> {
    let token = |name: &str| -> Result<String> {
        let v = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", name])?;
        Ok(v["token"].as_str().context("a token")?.to_string())
    };
    let zju = token("zju")?;
    let hdu = token("hdu")?;
    let submit = |token: &str, gpus: &str, cmd: &[&str]| -> Result<String> {
        let mut args = vec!["job", "submit", "--gpus", gpus, "--"];
        args.extend(cmd);
        let v = s.ctl_json(token, &args)?;
        Ok(v["id"].as_str().context("a job id")?.to_string())
    };
    let wait = |token: &str, id: &str, state: &str| {
        eventually(&format!("{id} to be {state}"), WAIT, || {
            let j = s.ctl_json(token, &["job", "get", id]).ok()?;
            (j["state"] == state).then_some(())
        })
    };
    let ok = submit(&zju, "1", &["true"])?;
    wait(&zju, &ok, "succeeded")?;
    let failing = submit(&zju, "1", &["sh", "-c", "exit 3"])?;
    wait(&zju, &failing, "failed")?;
    // Two jobs fill both nodes; a third waits.
    let a = submit(&hdu, "2", &["sleep", "300"])?;
    let b = submit(&zju, "2", &["sleep", "300"])?;
    wait(&hdu, &a, "running")?;
    wait(&zju, &b, "running")?;
    let waiting = submit(&hdu, "2", &["sleep", "300"])?;
    // A call that fails, so error panels have a series.
    let out = s.ctl(&zju, &["job", "get", "j-999999"]);
    assert!(!out.status.success(), "an unknown job is not found");
    Ok(Workload {
        to_cancel: vec![(hdu.clone(), waiting), (hdu, a), (zju, b)],
    })
}

/// One expression to check, and where it comes from.
struct Check {
    origin: String,
    expr: String,
}

/// Every expression of the dashboards (panel targets and template
/// variables) and of the rule files, ready to query.
fn expressions() -> Result<Vec<Check>> {
    let mut checks = vec![];
    let dir = deploy().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(file)?)
            .with_context(|| format!("{name} is not JSON"))?;
        dashboard_checks(&name, &d, &mut checks);
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(metric) = v["definition"].as_str().and_then(label_values_metric) {
                checks.push(Check {
                    origin: format!("{name}: variable {}", v["name"]),
                    expr: metric,
                });
            }
        }
    }
    for file in rule_files() {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let y: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file)?)?;
        for rule in rule_list(&y) {
            let expr = rule["expr"].as_str().context("a rule without expr")?;
            let (origin, expr) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(r), _) => (format!("{name}: record {r}"), expr.to_string()),
                // An alert's condition filters its series; with `bool` every
                // comparison keeps them, so data means the inputs exist.
                (_, Some(a)) => (format!("{name}: alert {a}"), with_bool_comparisons(expr)),
                _ => bail!("{name}: a rule that neither records nor alerts"),
            };
            checks.push(Check { origin, expr });
        }
    }
    Ok(checks)
}

fn dashboard_checks(file: &str, d: &Value, out: &mut Vec<Check>) {
    for panel in d["panels"].as_array().into_iter().flatten() {
        dashboard_checks(file, panel, out);
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Check {
                    origin: format!("{file}: panel {}", panel["title"]),
                    expr: expr
                        .replace("$__rate_interval", "1m")
                        .replace("$tenant", ".+")
                        .replace("$node", ".+"),
                });
            }
        }
    }
}

fn rule_list(y: &serde_yaml::Value) -> Vec<&serde_yaml::Value> {
    y["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .collect()
}

/// `label_values(metric, label)` -> `metric`.
fn label_values_metric(q: &str) -> Option<String> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    Some(inner.split(',').next()?.trim().to_string())
}

/// Adds `bool` to every comparison outside label matchers and strings.
fn with_bool_comparisons(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let (mut depth, mut quote) = (0, None);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') => depth -= 1,
            (None, '=' | '!' | '<' | '>') if depth == 0 => {
                let two = matches!((c, next), ('=' | '!' | '<' | '>', Some('=')));
                if matches!(c, '=' | '!') && !two {
                    out.push(c);
                    i += 1;
                    continue;
                }
                let op: String = chars[i..i + if two { 2 } else { 1 }].iter().collect();
                out.push_str(&op);
                out.push_str(" bool");
                i += op.len();
                continue;
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Metric names an expression uses (names containing `edupool`, outside
/// strings).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quote = None;
    for c in expr.chars().chain(std::iter::once(' ')) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                word.push(c);
                continue;
            }
            None => {}
        }
        if word.contains("edupool") {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

/// Awaited metric names, plus the recording rules built on them.
fn awaited_names(checks: &[Check]) -> BTreeSet<String> {
    let mut awaited: BTreeSet<String> = AWAITED.iter().map(|(n, _)| n.to_string()).collect();
    for c in checks {
        if let Some(record) = c.origin.split(": record ").nth(1) {
            if metric_names(&c.expr).iter().any(|n| awaited.contains(n)) {
                awaited.insert(record.to_string());
            }
        }
    }
    awaited
}

/// Polls until every check has data, skipping those that use an awaited
/// metric Prometheus does not have; returns the skipped ones, described.
fn wait_for_data(
    prom: &Prometheus,
    checks: &[Check],
    awaited: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut missing = String::new();
        let mut skipped = vec![];
        for c in checks {
            let uses: Vec<String> = metric_names(&c.expr)
                .into_iter()
                .filter(|n| awaited.contains(n))
                .collect();
            let absent: Vec<&String> = uses
                .iter()
                .filter(|n| {
                    prom.query(&format!("count({n})"))
                        .is_ok_and(|r| r.is_empty())
                })
                .collect();
            if !uses.is_empty() && absent.len() == uses.len() {
                let who: BTreeSet<&str> = AWAITED
                    .iter()
                    .filter(|(n, _)| absent.iter().any(|a| a.contains(n)))
                    .map(|(_, who)| *who)
                    .collect();
                let who: Vec<&str> = who.into_iter().collect();
                skipped.push(format!("{} (awaits {})", c.origin, who.join("; ")));
                continue;
            }
            match prom.query(&c.expr) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => writeln!(missing, "  {}: no data for {}", c.origin, c.expr)?,
                Err(e) => writeln!(missing, "  {}: {e:#}", c.origin)?,
            }
        }
        if missing.is_empty() {
            return Ok(skipped);
        }
        if Instant::now() > deadline {
            bail!("after {WAIT:?}, expressions without data:\n{missing}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A Prometheus config for the test: 1 s scrape and evaluation, the
/// shipped rule files with their `for:` holds cut to 1 s (the rules'
/// expressions are used unchanged).
fn write_test_config(dir: &Path, targets: &[(&str, Vec<SocketAddr>)]) -> Result<PathBuf> {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    let mut rule_paths = vec![];
    for file in rule_files() {
        let mut y: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file)?)?;
        for g in y["groups"].as_sequence_mut().into_iter().flatten() {
            for r in g["rules"].as_sequence_mut().into_iter().flatten() {
                if let Some(m) = r.as_mapping_mut().filter(|m| m.contains_key("for")) {
                    m.insert("for".into(), "1s".into());
                }
            }
        }
        let out = rules_dir.join(file.file_name().context("a rule file name")?);
        std::fs::write(&out, serde_yaml::to_string(&y)?)?;
        rule_paths.push(out);
    }
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    config.push_str("rule_files:\n");
    for p in &rule_paths {
        writeln!(config, "  - {:?}", p.display().to_string())?;
    }
    config.push_str("scrape_configs:\n");
    for (job, addrs) in targets {
        let list: Vec<String> = addrs
            .iter()
            .map(|a| format!("{:?}", a.to_string()))
            .collect();
        writeln!(
            config,
            "  - job_name: {job}\n    static_configs:\n      - targets: [{}]",
            list.join(", ")
        )?;
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config)?;
    promtool(&["check", "config", &path.to_string_lossy()], None)?;
    Ok(path)
}

#[test]
fn comparisons_get_bool_outside_matchers() {
    assert_eq!(
        with_bool_comparisons(r#"max by (node) (m{status!="ready"}) == 1"#),
        r#"max by (node) (m{status!="ready"}) == bool 1"#
    );
    assert_eq!(with_bool_comparisons("a / b < 0.1"), "a / b < bool 0.1");
    assert_eq!(with_bool_comparisons("a - b >= 3"), "a - b >= bool 3");
    assert_eq!(
        metric_names(r#"sum(class:edupool_x:sum{tenant=~"edupool"}) / edupool_y"#),
        ["class:edupool_x:sum", "edupool_y"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
