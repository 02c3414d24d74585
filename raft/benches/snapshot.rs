//! What a snapshot costs at growing sizes, phase by phase: copying the
//! state (the only part done under the state lock, on the raft driver),
//! encoding the copy and decoding it again (a restart's share). Each row
//! is a pool of N nodes of 8 GPUs holding F final jobs (each submitted as
//! the API does, with its audit record, then placed, started and exited)
//! and P queued ones.
//!
//! `cargo bench -p edupool-raft --bench snapshot` prints a table;
//! results are recorded in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use edupool_core::state::{
    Actor, Capacity, Command, Constraints, GpuInfo, JobClass, JobId, JobSpec, JobUsage, Millis,
    OnNodeLost, Outcome, State, TaskPlacement,
};
use edupool_raft::{SnapshotEnvelope, SNAPSHOT_FORMAT};

const T0: Millis = 1_700_000_000_000;
const GPUS_PER_NODE: u32 = 8;
const TENANTS: usize = 20;

fn ok(s: &mut State, cmd: Command) -> Outcome {
    s.apply(cmd, T0).expect("bench setup command applies").0
}

fn spec(i: usize) -> JobSpec {
    JobSpec {
        name: format!("job-{i}"),
        command: vec!["python".into(), "train.py".into()],
        env: BTreeMap::from([("JOB_NUMBER".to_string(), i.to_string())]),
        gpus: 1,
        nodes: 1,
        class: JobClass::Batch,
        walltime_secs: 3600,
        grace_period_secs: 30,
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

fn submit(s: &mut State, i: usize) -> JobId {
    let tenant = format!("t{:02}", i % TENANTS);
    let actor = Actor {
        token: format!("init-{tenant}"),
        name: tenant.clone(),
        role: None,
        tenant: Some(tenant.clone()),
    };
    let cmd = Command::SubmitJob {
        tenant,
        spec: spec(i),
    };
    let audited = Command::Audited {
        actor,
        action: "job.submit".into(),
        target: String::new(),
        cmd: Box::new(cmd),
    };
    match ok(s, audited) {
        Outcome::Job(id) => id,
        other => panic!("submit answered {other:?}"),
    }
}

fn pool(nodes: usize, finished: usize, queued: usize) -> State {
    let mut s = State::default();
    for t in 0..TENANTS {
        let name = format!("t{t:02}");
        let token_hash = format!("hash{t}");
        ok(&mut s, Command::CreateTenant { name, token_hash });
    }
    for n in 0..nodes {
        let node = format!("n{n:05}");
        let gpus = (0..GPUS_PER_NODE)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{node}-{i}"),
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
            .collect();
        let agent_version = "bench".into();
        ok(
            &mut s,
            Command::NodeConnected {
                node,
                gpus,
                agent_version,
                images: vec![],
                allows_host_jobs: true,
                cpu_millicores: 0,
                memory_bytes: 0,
            },
        );
    }
    for i in 0..finished {
        let id = submit(&mut s, i);
        let node = format!("n{:05}", i % nodes);
        let gpu = format!("GPU-{node}-{}", (i / nodes) % GPUS_PER_NODE as usize);
        let tasks = vec![TaskPlacement {
            node: node.clone(),
            gpus: vec![gpu],
        }];
        let capacity = Capacity::Borrowed;
        ok(
            &mut s,
            Command::PlaceJob {
                job: id,
                tasks,
                capacity,
            },
        );
        let started_at = T0;
        let job = id;
        ok(
            &mut s,
            Command::JobStarted {
                node: node.clone(),
                job,
                started_at,
            },
        );
        let usage = JobUsage {
            gpu_ms: 60_000,
            energy_mj: 20_000_000,
        };
        let exit = Command::JobExited {
            node,
            job,
            exit_code: Some(0),
            reason: String::new(),
            finished_at: T0 + 60_000,
            usage,
        };
        ok(&mut s, exit);
    }
    for i in finished..finished + queued {
        submit(&mut s, i);
    }
    s
}

fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    t[runs / 2]
}

fn main() {
    println!(
        "| Nodes | Final jobs | Queued jobs | Copy (state lock held) | Encode | Size | Decode |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let rows = [
        (1_000, 20_000, 0),
        (1_000, 50_000, 0),
        (1_000, 50_000, 150_000),
        (10_000, 50_000, 0),
    ];
    for (nodes, finished, queued) in rows {
        let state = pool(nodes, finished, queued);
        let copy = median(5, || {
            let began = Instant::now();
            black_box(state.clone());
            began.elapsed()
        });
        let env = SnapshotEnvelope {
            v: SNAPSHOT_FORMAT,
            index: 1,
            term: 1,
            peers: Default::default(),
            state,
        };
        let mut bytes = Vec::new();
        let encode = median(3, || {
            let began = Instant::now();
            bytes = env.encode();
            began.elapsed()
        });
        let decode = median(3, || {
            let began = Instant::now();
            black_box(SnapshotEnvelope::decode(&bytes).expect("decodes"));
            began.elapsed()
        });
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {nodes} | {finished} | {queued} | {:.1} ms | {:.0} ms | {:.1} MiB | {:.0} ms |",
            ms(copy),
            ms(encode),
            bytes.len() as f64 / (1024.0 * 1024.0),
            ms(decode)
        );
    }
}
