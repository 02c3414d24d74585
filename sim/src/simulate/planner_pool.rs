//! Scenario 2 through the scheduler itself: the openb cluster built with
//! the commands the real scheduler logs (`CreateTenant`, `NodeConnected`),
//! each task submitted as a job (`SubmitJob`), placed by `planner::plan`
//! on the virtual clock and applied with `Indexed::apply` (`State::apply`
//! with the planner's indexes kept). The simulator
//! decides nothing: a task the planner does not place in the round after
//! it arrives fails and is cancelled, as in the FGD protocol, and nothing
//! ever leaves.
//!
//! A task is a job of one task with the trace's GPUs, share of a GPU,
//! set of GPU models, CPU and memory; a node reports its GPUs, CPU and
//! memory (CPU-only nodes too).

use edupool_core::planner::{self, Policy, QueueOrder};
use edupool_core::state::{
    Command, Constraints, GpuInfo, Indexed, JobClass, JobId, JobSpec, Millis, OnNodeLost, Outcome,
    State, WHOLE_GPU,
};

use super::traces::{OpenbNode, OpenbTask};

const TENANT: &str = "openb";

/// The cluster as the planner fills it.
pub struct Pool {
    state: Indexed,
    policy: Policy,
    now: Millis,
    capacity_milli: u64,
    allocated_milli: u64,
    /// Decisions `State::apply` refused (expected to be none).
    pub rejected: u64,
}

impl Pool {
    pub fn new(nodes: &[OpenbNode]) -> Pool {
        let mut state = Indexed::default();
        let tenant = Command::CreateTenant {
            name: TENANT.into(),
            token_hash: "simulated-token".into(),
        };
        let _ = state.apply(tenant, 0);
        // The planner scores by the mix of the tasks submitted so far, as
        // a live pool's leader starts it.
        let _ = state.apply(Command::StartMixTally, 0);
        let mut capacity_milli = 0;
        for n in nodes {
            let gpus = (0..n.gpus)
                .map(|g| GpuInfo::plain(format!("GPU-{}-{g}", n.name), g, n.model.clone(), 0))
                .collect();
            let connect = Command::NodeConnected {
                node: n.name.clone(),
                gpus,
                agent_version: "simulated".into(),
                images: vec![],
                allows_host_jobs: true,
                cpu_millicores: n.cpu_milli,
                memory_bytes: n.memory_mib << 20,
            };
            if state.apply(connect, 0).is_ok() {
                capacity_milli += u64::from(n.gpus) * u64::from(WHOLE_GPU);
            }
        }
        Pool {
            state,
            policy: Policy {
                order: QueueOrder::Fifo,
                ..Policy::default()
            },
            now: 0,
            capacity_milli,
            allocated_milli: 0,
            rejected: 0,
        }
    }

    pub fn capacity_milli(&self) -> u64 {
        self.capacity_milli
    }

    /// Allocated GPU thousandths over capacity, in percent.
    pub fn allocation_percent(&self) -> f64 {
        100.0 * self.allocated_milli as f64 / self.capacity_milli.max(1) as f64
    }

    /// The state as the replay left it.
    pub fn state(&self) -> &State {
        self.state.state()
    }

    /// Submits `t` and lets the planner place it; false when it failed.
    pub fn place(&mut self, t: &OpenbTask) -> bool {
        self.now += 1;
        let spec = spec_of(t);
        let submit = Command::SubmitJob {
            tenant: TENANT.into(),
            spec,
        };
        let Ok((Outcome::Job(id), _)) = self.state.apply(submit, self.now) else {
            // No node of the pool could ever hold it.
            return false;
        };
        let mut placed = false;
        for d in planner::plan(&self.state, self.now, &self.policy) {
            let mine = d.job() == id;
            match self.state.apply(d.into_command(), self.now) {
                Ok(_) => placed |= mine,
                Err(_) => self.rejected += 1,
            }
        }
        if placed {
            self.allocated_milli += t.gpu_request_milli();
        } else {
            self.fail(id);
        }
        placed
    }

    fn fail(&mut self, id: JobId) {
        let cancel = Command::CancelJob {
            tenant: None,
            job: id,
            reason: "fits nowhere on arrival".into(),
        };
        if self.state.apply(cancel, self.now).is_err() {
            self.rejected += 1;
        }
    }
}

/// The job a task is submitted as.
fn spec_of(t: &OpenbTask) -> JobSpec {
    JobSpec {
        name: t.name.clone(),
        command: vec!["openb-task".into()],
        env: Default::default(),
        gpus: t.gpus,
        nodes: 1,
        class: JobClass::Batch,
        walltime_secs: 3600,
        grace_period_secs: 0,
        on_node_lost: OnNodeLost::Fail,
        max_retries: 0,
        priority: 0,
        gpu_fraction: if t.gpus > 0 && t.gpu_milli < WHOLE_GPU {
            t.gpu_milli
        } else {
            0
        },
        constraints: Constraints {
            gpu_models: {
                let mut m = t.models.clone();
                m.sort();
                m.dedup();
                m
            },
            ..Constraints::default()
        },
        requeue_on_preempt: false,
        image: None,
        secret_env: Default::default(),
        cpu_millicores: t.cpu_milli,
        memory_bytes: t.memory_mib << 20,
    }
}
