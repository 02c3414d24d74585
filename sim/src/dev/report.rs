//! Runs a workload against the dev pool through the public API, as a
//! university would, and reports where each job ran and how it ended.

use std::collections::BTreeMap;
use std::time::Duration;

use edupool_proto::v1 as pb;
use edupool_table::Table;
use edupoolctl::client::{connect, describe_status, Clients};
use edupoolctl::{class_name, job_state_is_final, job_state_name};
use tokio::time::Instant;

use super::workload::Workload;
use super::DevError;

const POLL: Duration = Duration::from_millis(200);

/// Submits the workload and follows it; returns (jobs, jobs not in their
/// expected final state).
pub async fn run_workload(
    endpoint: &str,
    admin_token: &str,
    nodes: usize,
    workload: &Workload,
    timeout: Duration,
) -> Result<(usize, usize), DevError> {
    let deadline = Instant::now() + timeout;
    let admin = client(endpoint, admin_token).await?;
    wait_for_nodes(&admin, nodes, deadline).await?;

    let mut expect: BTreeMap<String, Option<String>> = BTreeMap::new();
    for tenant in &workload.tenants {
        let created = admin
            .admin
            .clone()
            .create_tenant(pb::CreateTenantRequest {
                name: tenant.name.clone(),
            })
            .await
            .map_err(|s| run_err(&format!("create tenant {}", tenant.name), &s))?
            .into_inner();
        for node in &tenant.owns {
            admin
                .admin
                .clone()
                .label_node(pb::LabelNodeRequest {
                    name: node.clone(),
                    labels: Some(pb::NodeLabels {
                        owner: tenant.name.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(|s| run_err(&format!("label node {node}"), &s))?;
        }
        if !tenant.owns.is_empty() {
            println!(
                "{} contributes {}: their GPUs are its guarantee",
                tenant.name,
                tenant.owns.join(", ")
            );
        }
        let own = client(endpoint, &created.token).await?;
        for job in &tenant.jobs {
            let spec = job
                .file
                .to_spec()
                .map_err(|e| DevError::Run(e.to_string()))?;
            let submitted = own
                .jobs
                .clone()
                .submit_job(pb::SubmitJobRequest {
                    array: 0,
                    request_id: String::new(),
                    spec: Some(spec),
                })
                .await
                .map_err(|s| run_err("submit", &s))?
                .into_inner()
                .job
                .ok_or_else(|| DevError::Run("the scheduler returned no job".into()))?;
            let spec = submitted.spec.clone().unwrap_or_default();
            println!(
                "{:<6} {:<18} submitted {:<18} {} GPU(s), {}",
                submitted.id,
                submitted.tenant,
                spec.name,
                spec.gpus,
                class_name(spec.class)
            );
            expect.insert(submitted.id, job.expect.clone());
        }
    }
    println!();
    let jobs = follow(&admin, &expect, deadline).await?;
    println!();
    print_summary(&admin, &jobs).await;
    print_ledger(&admin).await;
    let unexpected = jobs
        .iter()
        .filter(|j| {
            expect
                .get(&j.id)
                .and_then(|e| e.as_deref())
                .is_some_and(|e| e != job_state_name(j.state))
        })
        .count();
    if unexpected > 0 {
        println!("{unexpected} job(s) did not end as the workload expected.");
    } else {
        println!("All {} jobs ended as expected.", jobs.len());
    }
    Ok((jobs.len(), unexpected))
}

async fn client(endpoint: &str, token: &str) -> Result<Clients, DevError> {
    connect(&[endpoint.to_string()], Some(token))
        .await
        .map_err(|e| DevError::Run(e.to_string()))
}

fn run_err(what: &str, s: &tonic::Status) -> DevError {
    DevError::Run(format!("{what}: {}", describe_status(s)))
}

async fn wait_for_nodes(admin: &Clients, want: usize, deadline: Instant) -> Result<(), DevError> {
    loop {
        let nodes = admin
            .admin
            .clone()
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(|s| run_err("list nodes", &s))?
            .into_inner()
            .nodes;
        let ready = nodes
            .iter()
            .filter(|n| n.status == pb::NodeStatus::Ready as i32)
            .count();
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DevError::Run(format!(
                "only {ready} of {want} agents connected"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Prints each job's changes until every job has ended.
async fn follow(
    admin: &Clients,
    ids: &BTreeMap<String, Option<String>>,
    deadline: Instant,
) -> Result<Vec<pb::Job>, DevError> {
    let mut seen: BTreeMap<String, (i32, u32)> = BTreeMap::new();
    loop {
        let mut client = admin.jobs.clone();
        let all = edupoolctl::paging::walk(None, async |page_token, _| {
            let req = pb::ListJobsRequest {
                page_token,
                ..Default::default()
            };
            let r = client.list_jobs(req).await?.into_inner();
            Ok::<_, tonic::Status>((r.jobs, r.next_page_token))
        })
        .await
        .map_err(|s| run_err("list jobs", &s))?;
        let jobs: Vec<pb::Job> = all
            .into_iter()
            .filter(|j| ids.contains_key(&j.id))
            .collect();
        for j in &jobs {
            if seen.get(&j.id) != Some(&(j.state, j.attempt)) {
                seen.insert(j.id.clone(), (j.state, j.attempt));
                println!(
                    "{:<6} {:<18} {:<11} {}",
                    j.id,
                    j.tenant,
                    job_state_name(j.state),
                    where_and_why(j)
                );
            }
        }
        if jobs.len() == ids.len() && jobs.iter().all(|j| job_state_is_final(j.state)) {
            return Ok(jobs);
        }
        if Instant::now() > deadline {
            return Err(DevError::Run("the workload's time ran out".into()));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn where_and_why(j: &pb::Job) -> String {
    if j.node.is_empty() {
        return j.reason.clone();
    }
    // The first block of each UUID is enough to tell GPUs apart here.
    let gpus: Vec<&str> = j
        .gpu_uuids
        .iter()
        .map(|u| u.get(..12).unwrap_or(u))
        .collect();
    format!("{} [{}] {}", j.node, gpus.join(","), j.reason)
}

async fn print_summary(admin: &Clients, jobs: &[pb::Job]) {
    let mut table = Table::new([
        "JOB",
        "TENANT",
        "NAME",
        "GPUS",
        "NODE",
        "STATE",
        "EXIT",
        "SECONDS",
        "GPU-S",
        "ENERGY",
        "FIRST OUTPUT LINE",
    ]);
    for j in jobs {
        let spec = j.spec.clone().unwrap_or_default();
        let secs = if j.started_at_ms > 0 && j.finished_at_ms >= j.started_at_ms {
            format!(
                "{:.1}",
                (j.finished_at_ms - j.started_at_ms) as f64 / 1000.0
            )
        } else {
            "-".into()
        };
        let exit = if j.has_exit_code {
            j.exit_code.to_string()
        } else {
            "-".into()
        };
        table.row([
            j.id.clone(),
            j.tenant.clone(),
            spec.name,
            spec.gpus.to_string(),
            if j.node.is_empty() {
                "-".into()
            } else {
                j.node.clone()
            },
            job_state_name(j.state).to_string(),
            exit,
            secs,
            // Over all attempts, as the agents metered them.
            format!("{:.1}", j.gpu_seconds),
            format!("{:.0} J", j.energy_joules),
            first_line(admin, &j.id).await,
        ]);
    }
    print!("{}", table.render());
    println!();
}

/// GPU-hours per tenant from the usage ledger (every run, requeues
/// included), as `edupoolctl usage report` computes them.
async fn print_ledger(admin: &Clients) {
    let report = admin
        .usage
        .clone()
        .get_usage_report(pb::UsageReportRequest {
            tenant: String::new(),
            from_ms: 0,
            to_ms: i64::MAX,
            by: "class".into(),
            ..Default::default()
        })
        .await;
    let rows = match report {
        Ok(r) => r.into_inner().rows,
        Err(s) => {
            println!("usage ledger: {}", describe_status(&s));
            return;
        }
    };
    let mut per_tenant: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in rows {
        let t = per_tenant.entry(r.tenant).or_default();
        t.0 += r.runs;
        t.1 += r.gpu_milli_ms;
        t.2 += r.borrowed_gpu_milli_ms;
    }
    let mut table = Table::new(["TENANT", "RUNS", "GPU-HOURS", "BORROWED GPU-HOURS"]);
    for (tenant, (runs, gpu, borrowed)) in per_tenant {
        table.row([
            tenant,
            runs.to_string(),
            edupoolctl::usage::gpu_hours(gpu),
            edupoolctl::usage::gpu_hours(borrowed),
        ]);
    }
    println!("Usage ledger (edupoolctl usage report):");
    print!("{}", table.render());
    println!();
}

async fn first_line(admin: &Clients, id: &str) -> String {
    let logs = admin
        .jobs
        .clone()
        .get_job_logs(pb::GetJobLogsRequest {
            id: id.to_string(),
            stream: pb::LogStream::Stdout as i32,
            offset: 0,
            max_bytes: 4096,
        })
        .await;
    match logs {
        Ok(r) => String::from_utf8_lossy(&r.into_inner().data)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect(),
        Err(s) => format!("(logs unavailable: {})", s.message()),
    }
}
