//! Builders shared by the core's unit tests.

// Builders for tests fail loudly; they never run inside `apply`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// What the builders apply commands to: a state, or a state with the
/// planner's indexes beside it.
pub trait Apply {
    fn apply(&mut self, cmd: Command, at: Millis) -> Applied;
}

impl Apply for State {
    fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        State::apply(self, cmd, at)
    }
}

impl Apply for Indexed {
    fn apply(&mut self, cmd: Command, at: Millis) -> Applied {
        Indexed::apply(self, cmd, at)
    }
}

pub fn apply_ok(s: &mut impl Apply, cmd: Command) -> (Outcome, Vec<Effect>) {
    s.apply(cmd.clone(), 1_000)
        .unwrap_or_else(|e| panic!("{cmd:?} rejected: {e}"))
}

pub fn uuid(node: &str, i: u32) -> String {
    format!("GPU-{node}-{i}")
}

pub fn tenant(s: &mut impl Apply, name: &str) {
    apply_ok(
        s,
        Command::CreateTenant {
            name: name.into(),
            token_hash: format!("hash-of-{name}"),
        },
    );
    apply_ok(s, Command::AssignUidOffsets);
    apply_ok(s, Command::StartMixTally);
}

pub fn gpus(node: &str, n: u32) -> Vec<GpuInfo> {
    (0..n)
        .map(|i| GpuInfo {
            uuid: uuid(node, i),
            index: i,
            model: "A100-80GB".into(),
            memory_bytes: 80 << 30,
            healthy: true,
            peers: vec![],
            health_reason: String::new(),
            pci_bus_id: String::new(),
            nvlink_peers: vec![],
            compute_capability: String::new(),
        })
        .collect()
}

pub fn node(s: &mut impl Apply, name: &str, n: u32) {
    apply_ok(
        s,
        Command::NodeConnected {
            node: name.into(),
            gpus: gpus(name, n),
            agent_version: "test".into(),
            images: vec![],
            allows_host_jobs: true,
            cpu_millicores: 0,
            memory_bytes: 0,
        },
    );
}

pub fn spec(gpus: u32, class: JobClass) -> JobSpec {
    JobSpec {
        name: "job".into(),
        command: vec!["true".into()],
        env: Default::default(),
        gpus,
        nodes: 1,
        class,
        walltime_secs: 3600,
        grace_period_secs: 5,
        on_node_lost: OnNodeLost::Requeue,
        max_retries: 1,
        priority: 0,
        gpu_fraction: 0,
        constraints: Constraints::default(),
        requeue_on_preempt: true,
        secret_env: Default::default(),
        image: None,
        cpu_millicores: 0,
        memory_bytes: 0,
    }
}

pub fn submit(s: &mut impl Apply, tenant: &str, gpus: u32, class: JobClass) -> JobId {
    match apply_ok(
        s,
        Command::SubmitJob {
            tenant: tenant.into(),
            spec: spec(gpus, class),
        },
    ) {
        (Outcome::Job(id), _) => id,
        other => panic!("unexpected {other:?}"),
    }
}

/// An admin acting through token `token`.
pub fn actor(token: &str) -> Actor {
    Actor {
        token: token.into(),
        name: token.into(),
        role: Some(Role::Admin),
        tenant: None,
    }
}

/// Submits a job of `gpus` GPUs to "zju" as token "tok-7", audited.
pub fn audited_submit(s: &mut impl Apply, gpus: u32) -> JobId {
    let submit = Command::Audited {
        actor: actor("tok-7"),
        action: "job.submit".into(),
        target: String::new(),
        cmd: Box::new(Command::SubmitJob {
            tenant: "zju".into(),
            spec: spec(gpus, JobClass::Batch),
        }),
    };
    match apply_ok(s, submit) {
        (Outcome::Job(job), _) => job,
        (out, _) => panic!("{out:?}"),
    }
}

/// Reports `job` exited with code 0 on `node` at `finished_at`.
pub fn exit_ok(s: &mut impl Apply, node: &str, job: JobId, finished_at: Millis) {
    apply_ok(
        s,
        Command::JobExited {
            node: node.into(),
            job,
            exit_code: Some(0),
            reason: String::new(),
            finished_at,
            usage: JobUsage::default(),
        },
    );
}
