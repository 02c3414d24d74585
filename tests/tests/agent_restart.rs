//! A fault in the spirit of `ha_jepsen.rs`: `kill -9` of an agent while its
//! jobs run, then a restart on the same work directory. Afterwards:
//!
//! - no GPU ever held two jobs' processes at once: every job takes an
//!   exclusive `flock` on a file named after its GPU and holds it in every
//!   process it forks, and one that finds the lock taken records a
//!   conflict; so a new run on a GPU whose old run still has a process
//!   alive is caught, whatever the scheduler believes;
//! - the old runs' processes are gone before the agent reports again;
//! - no acknowledged job is lost: every submitted job succeeds, the
//!   interrupted ones on a later attempt (node-loss rules, not a failure).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use edupool_tests::{eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Holds its GPU's lock in every process until `release` exists, then
/// exits 0; records its start, or a conflict when the lock is taken.
const JOB: &str = r#"exec 9>>"$EVIDENCE/$CUDA_VISIBLE_DEVICES.lock"
if ! flock -n 9; then echo "$EDUPOOL_JOB_ID attempt $EDUPOOL_ATTEMPT on $CUDA_VISIBLE_DEVICES" >> "$EVIDENCE/conflicts"; exit 1; fi
echo "$EDUPOOL_JOB_ID $EDUPOOL_ATTEMPT $$" >> "$EVIDENCE/started"
while [ ! -e "$EVIDENCE/release" ]; do sleep 0.1; done"#;

fn submit(s: &Scheduler, token: &str, evidence: &Path, name: &str) -> Result<String> {
    let env = format!("EVIDENCE={}", evidence.display());
    let v = s.ctl_json(
        token,
        &[
            "job",
            "submit",
            "--gpus",
            "1",
            "--name",
            name,
            "-e",
            &env,
            "--max-retries",
            "3",
            "--",
            "sh",
            "-c",
            JOB,
        ],
    )?;
    Ok(v["id"].as_str().expect("a job id").to_string())
}

fn job(s: &Scheduler, token: &str, id: &str) -> Option<Value> {
    s.ctl_json(token, &["job", "get", id]).ok()
}

/// (job id, attempt, pid) of every run that started.
fn started(evidence: &Path) -> Vec<(String, u32, i32)> {
    std::fs::read_to_string(evidence.join("started"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The live (not zombie) processes of process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2) == Some(&pgid.to_string().as_str())
        })
}

#[test]
fn an_agent_killed_with_running_jobs_never_shares_a_gpu_after_its_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let evidence = dir.path().join("evidence");
    std::fs::create_dir_all(&evidence)?;
    let work = dir.path().join("agent");
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let mut agent = s.agent("n1", "2xA100-80GB", &work)?;
    let tenant = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let token = tenant["token"].as_str().expect("a token").to_string();

    // Two jobs fill both GPUs; a third waits for one.
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| submit(&s, &token, &evidence, n))
        .collect::<Result<_>>()?;
    let first = eventually("two runs to start", WAIT, || {
        let runs = started(&evidence);
        (runs.len() == 2).then_some(runs)
    })?;

    agent.kill9();
    // The crash leaves the runs' processes behind.
    for (job, _, pid) in &first {
        assert!(group_alive(*pid), "{job}'s run outlives the agent's crash");
    }
    let _agent = s.agent("n1", "2xA100-80GB", &work)?;
    for (job, _, pid) in &first {
        eventually(&format!("{job}'s old run to be stopped"), WAIT, || {
            (!group_alive(*pid)).then_some(())
        })?;
    }
    // New runs start on the freed GPUs: the third job or the next attempt
    // of an interrupted one.
    eventually("new runs after the restart", WAIT, || {
        (started(&evidence).len() >= 4).then_some(())
    })?;

    std::fs::write(evidence.join("release"), "")?;
    for id in &ids {
        let j = eventually(&format!("{id} to end"), WAIT, || {
            let j = job(&s, &token, id)?;
            let state = j["state"].as_str()?.to_string();
            (!matches!(state.as_str(), "pending" | "assigned" | "running")).then_some(j)
        })?;
        assert_eq!(j["state"], "succeeded", "acknowledged job {id} ended: {j}");
    }
    let conflicts = std::fs::read_to_string(evidence.join("conflicts")).unwrap_or_default();
    assert!(
        conflicts.is_empty(),
        "a GPU held two jobs' processes at once:\n{conflicts}"
    );
    for (job, attempt, _) in &first {
        let again = started(&evidence)
            .into_iter()
            .any(|(j, a, _)| &j == job && a > *attempt);
        assert!(again, "{job} ran again after its run was stopped");
    }
    Ok(())
}
