//! Conversions between the agent's domain types and `edupool_proto::v1`,
//! all in one place: nothing else in the agent builds or reads protocol
//! messages field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edupool_proto::v1;

use crate::inventory::{GpuInfo, GpuSample};
use crate::runner::{ExitOutcome, JobReport, JobState, LogChunk, LogStream, StartRequest};

/// Milliseconds since the Unix epoch; 0 for times before it.
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The inventory's GPUs as the scheduler sees them.
pub(crate) fn gpus(inventory: &[GpuInfo]) -> Vec<v1::Gpu> {
    inventory
        .iter()
        .map(|info| gpu(info, nvlink_peer_indexes(info, inventory)))
        .collect()
}

/// The indexes of the GPUs at the other end of `info`'s NVLinks: those
/// whose PCI bus id appears in its `nvlink_peers` (the planner prefers
/// GPUs that share fast links). Ids are compared case-insensitively; a
/// peer outside the inventory (another board, a switch) is left out.
pub(crate) fn nvlink_peer_indexes(info: &GpuInfo, inventory: &[GpuInfo]) -> Vec<u32> {
    let mut peers: Vec<u32> = inventory
        .iter()
        .filter(|other| other.index != info.index)
        .filter(|other| {
            other.pci_bus_id.as_deref().is_some_and(|bus| {
                info.nvlink_peers
                    .iter()
                    .any(|peer| peer.eq_ignore_ascii_case(bus))
            })
        })
        .map(|other| other.index)
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// A GPU of the inventory as the scheduler sees it, with the indexes of
/// its NVLink peers.
pub(crate) fn gpu(info: &GpuInfo, peers: Vec<u32>) -> v1::Gpu {
    v1::Gpu {
        uuid: info.uuid.clone(),
        index: info.index,
        model: info.model.clone(),
        memory_bytes: info.memory_bytes,
        healthy: info.healthy,
        assigned_job: String::new(),
        peers,
        health_reason: info.health_reason.clone().unwrap_or_default(),
        reset_seen: false,
        telemetry: None,
        pci_bus_id: info.pci_bus_id.clone().unwrap_or_default(),
        compute_capability: info.compute_capability.clone().unwrap_or_default(),
        nvlink_peers: info.nvlink_peers.clone(),
    }
}

/// A telemetry round as the summary the scheduler keeps.
pub(crate) fn telemetry(samples: &[GpuSample], at: SystemTime) -> v1::TelemetrySummary {
    let at_ms = unix_ms(at);
    v1::TelemetrySummary {
        gpus: samples
            .iter()
            .filter(|s| !s.lost)
            .map(|s| v1::GpuTelemetry {
                gpu_uuid: s.uuid.clone(),
                utilization_ratio: s.utilization_ratio.unwrap_or(0.0),
                memory_used_bytes: s.memory_used_bytes.unwrap_or(0),
                temperature_celsius: s.temperature_celsius.unwrap_or(0.0),
                power_watts: s.power_watts.unwrap_or(0.0),
                energy_joules: s.energy_joules.unwrap_or(0.0),
                at_ms,
            })
            .collect(),
    }
}

/// A start order. Walltime 0 means no limit; grace period 0 means the
/// agent's default; an empty image means a host job; CPU and memory 0 mean
/// no limit.
pub(crate) fn start_request(start: v1::StartJob) -> StartRequest {
    StartRequest {
        job_id: start.job_id,
        tenant: start.tenant,
        command: start.command,
        env: start.env.into_iter().collect(),
        gpu_uuids: start.gpu_uuids,
        walltime: nonzero_seconds(start.walltime_seconds),
        grace_period: nonzero_seconds(start.grace_period_seconds),
        attempt: start.attempt,
        image: (!start.image.is_empty()).then_some(start.image),
        cpu_millicores: start.cpu_millicores,
        memory_bytes: start.memory_bytes,
        data_level: start.data_level,
        tenant_uid_offset: start.tenant_uid_offset,
    }
}

/// `None` for 0, which the protocol uses for "not given".
pub(crate) fn nonzero_seconds(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// A job's report as the protocol carries it.
pub(crate) fn job_report(report: &JobReport) -> v1::JobReport {
    let mut out = v1::JobReport {
        job_id: report.job_id.clone(),
        running: report.is_running(),
        started_at_ms: report.started_at.map_or(0, unix_ms),
        ..Default::default()
    };
    if let JobState::Exited(exit) = &report.state {
        match exit.outcome {
            ExitOutcome::Code(code) => {
                out.has_exit_code = true;
                out.exit_code = code;
            }
            ExitOutcome::Signal(signal) => out.signal = signal,
            ExitOutcome::Unknown => {}
        }
        out.reason = exit.reason.clone();
        out.finished_at_ms = unix_ms(exit.finished_at);
        if let Some(usage) = exit.usage {
            out.gpu_seconds = usage.gpu_time.as_secs_f64();
            out.energy_joules = usage.energy_millijoules.unwrap_or(0) as f64 / 1e3;
        }
    }
    out
}

/// The stream a log request asks for; unspecified means stdout. An unknown
/// value is returned as the error.
pub(crate) fn log_stream(stream: i32) -> Result<LogStream, i32> {
    match v1::LogStream::try_from(stream) {
        Ok(v1::LogStream::Unspecified | v1::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(v1::LogStream::Stderr) => Ok(LogStream::Stderr),
        Err(_) => Err(stream),
    }
}

/// The answer to log request `request_id`: a chunk, or why there is none.
pub(crate) fn log_chunk(request_id: u64, result: Result<LogChunk, String>) -> v1::LogChunk {
    match result {
        Ok(chunk) => v1::LogChunk {
            request_id,
            data: chunk.data,
            next_offset: chunk.next_offset,
            eof: chunk.eof,
            error: String::new(),
        },
        Err(error) => v1::LogChunk {
            request_id,
            error,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{JobExit, JobUsage};

    fn exited(outcome: ExitOutcome, reason: &str) -> JobReport {
        JobReport {
            job_id: "j1".into(),
            started_at: Some(UNIX_EPOCH + Duration::from_millis(1_000)),
            state: JobState::Exited(JobExit {
                outcome,
                reason: reason.into(),
                finished_at: UNIX_EPOCH + Duration::from_millis(5_500),
                usage: Some(JobUsage {
                    gpu_time: Duration::from_millis(9_000),
                    energy_millijoules: Some(1_234_500),
                }),
            }),
        }
    }

    #[test]
    fn reports_carry_exit_code_or_signal() {
        let code = job_report(&exited(ExitOutcome::Code(3), "exited with code 3"));
        assert_eq!(
            code,
            v1::JobReport {
                job_id: "j1".into(),
                running: false,
                exit_code: 3,
                has_exit_code: true,
                signal: 0,
                reason: "exited with code 3".into(),
                started_at_ms: 1_000,
                finished_at_ms: 5_500,
                gpu_seconds: 9.0,
                energy_joules: 1_234.5,
            }
        );
        let signal = job_report(&exited(ExitOutcome::Signal(9), "cancelled"));
        assert!(!signal.has_exit_code && signal.signal == 9 && signal.reason == "cancelled");
        let failed = job_report(&JobReport {
            started_at: None,
            ..exited(ExitOutcome::Unknown, "failed to start: x")
        });
        assert!(!failed.has_exit_code && failed.signal == 0 && failed.started_at_ms == 0);
        let running = job_report(&JobReport {
            job_id: "j2".into(),
            started_at: Some(UNIX_EPOCH + Duration::from_millis(7)),
            state: JobState::Running,
        });
        assert!(running.running && running.finished_at_ms == 0 && running.started_at_ms == 7);
    }

    #[test]
    fn start_orders_map_zero_to_defaults() {
        let request = start_request(v1::StartJob {
            job_id: "j1".into(),
            command: vec!["true".into()],
            walltime_seconds: 0,
            grace_period_seconds: 5,
            attempt: 2,
            ..Default::default()
        });
        assert_eq!(request.walltime, None);
        assert_eq!(request.grace_period, Some(Duration::from_secs(5)));
        assert_eq!(request.attempt, 2);
        assert_eq!(request.image, None);
        let container = start_request(v1::StartJob {
            job_id: "j2".into(),
            image: "busybox".into(),
            cpu_millicores: 500,
            memory_bytes: 1 << 30,
            data_level: 2,
            tenant_uid_offset: 7,
            ..Default::default()
        });
        assert_eq!(container.image.as_deref(), Some("busybox"));
        assert_eq!(
            (container.cpu_millicores, container.memory_bytes),
            (500, 1 << 30)
        );
        assert_eq!((container.data_level, container.tenant_uid_offset), (2, 7));
    }

    #[test]
    fn nvlink_peers_become_indexes() {
        let gpu = |index: u32, bus: &str, peers: &[&str]| {
            let mut info =
                GpuInfo::basic(format!("GPU-{index}"), index, "A100-80GB".into(), 80 << 30);
            info.pci_bus_id = Some(bus.into());
            info.nvlink_peers = peers.iter().map(|p| (*p).to_owned()).collect();
            info
        };
        let inventory = vec![
            gpu(
                0,
                "00000000:3B:00.0",
                &["00000000:5e:00.0", "00000000:AF:00.0"],
            ),
            gpu(1, "00000000:5E:00.0", &["00000000:3B:00.0"]),
            gpu(2, "00000000:86:00.0", &[]),
            // A link to a device outside the inventory (an NVSwitch) is left out.
            gpu(
                3,
                "00000000:AF:00.0",
                &["00000000:3B:00.0", "00000000:FF:00.0"],
            ),
        ];
        let sent = gpus(&inventory);
        let peers: Vec<Vec<u32>> = sent.iter().map(|g| g.peers.clone()).collect();
        assert_eq!(peers, vec![vec![1, 3], vec![0], vec![], vec![0]]);
        assert_eq!(sent[0].nvlink_peers.len(), 2);
        assert_eq!(sent[0].pci_bus_id, "00000000:3B:00.0");
        // Without PCI bus ids (the simulated backend) there are no peers.
        let plain = vec![GpuInfo::basic(
            "GPU-a".into(),
            0,
            "A100-80GB".into(),
            80 << 30,
        )];
        assert!(gpus(&plain)[0].peers.is_empty());
    }

    #[test]
    fn log_streams() {
        assert_eq!(log_stream(0), Ok(LogStream::Stdout));
        assert_eq!(log_stream(1), Ok(LogStream::Stdout));
        assert_eq!(log_stream(2), Ok(LogStream::Stderr));
        assert_eq!(log_stream(9), Err(9));
    }
}
