//! GPU health as the agent judges it.
//!
//! Two sources feed the [`HealthBoard`]: driver events (XID errors,
//! uncorrectable ECC errors) and telemetry samples (ECC counters, pages
//! pending retirement, rows pending remapping or a failed remapping, a GPU
//! that stopped answering). A fatal finding marks the GPU unhealthy at
//! once, and it stays so until the GPU is reset (the backend reports a
//! reset, or the agent restarts after one and finds it clean): health
//! never comes back by itself in the middle of a fault.
//! Every change is sent to the scheduler; throttling is shown in telemetry
//! but is not a fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::inventory::{GpuInfo, GpuSample, HealthEvent, HealthEventKind};

/// XID codes that mean the GPU must not run jobs until it is reset, with
/// what they mean (from NVIDIA's XID catalogue). Other XIDs (e.g. 13, 31,
/// 43: a job's own faults) are counted but leave the GPU healthy.
pub const FATAL_XIDS: &[(u64, &str)] = &[
    (48, "double bit ECC error"),
    (61, "internal micro-controller breakpoint"),
    (62, "internal micro-controller halt"),
    (63, "ECC page retirement or row remapping recorded"),
    (64, "ECC page retirement or row remapping failed"),
    (74, "NVLink error"),
    (79, "GPU has fallen off the bus"),
    (92, "high single bit ECC error rate"),
    (94, "contained ECC error"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
    (140, "unrecovered ECC error"),
];

/// What a fatal XID means; `None` for XIDs that are not fatal.
pub fn fatal_xid(code: u64) -> Option<&'static str> {
    FATAL_XIDS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, what)| *what)
}

/// A fault visible in a telemetry sample, for people; `None` when the
/// sample shows none.
pub fn sample_fault(sample: &GpuSample) -> Option<String> {
    if sample.lost {
        return Some("GPU has fallen off the bus (it no longer answers the driver)".into());
    }
    if let Some(n) = sample.ecc_volatile_uncorrected.filter(|&n| n > 0) {
        return Some(format!(
            "{n} uncorrectable ECC error{} since the driver loaded",
            if n == 1 { "" } else { "s" }
        ));
    }
    let remap = sample.remapped_rows.unwrap_or_default();
    if remap.failed {
        return Some(
            "row remapping failed (no spare memory rows left); the GPU needs service".into(),
        );
    }
    if sample.retired_pages_pending {
        return Some("memory pages are pending retirement; the GPU needs a reset".into());
    }
    if remap.pending {
        return Some("memory rows are pending remapping; the GPU needs a reset".into());
    }
    None
}

/// A change of one GPU's health, for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    /// The GPU.
    pub uuid: String,
    /// Healthy now.
    pub healthy: bool,
    /// Why it is unhealthy; empty when healthy.
    pub reason: String,
}

#[derive(Debug, Default)]
struct GpuHealth {
    /// Why the GPU is unhealthy; `None` when healthy.
    fault: Option<String>,
    /// XID errors seen since the agent started.
    xid_errors: u64,
}

/// The health of every GPU of the node; cheap to clone, all clones share
/// the same board.
#[derive(Debug, Clone)]
pub struct HealthBoard {
    inner: Arc<Mutex<BTreeMap<String, GpuHealth>>>,
    changes: mpsc::UnboundedSender<HealthChange>,
}

/// The receiving end of a board's changes.
#[derive(Debug)]
pub struct HealthChanges {
    rx: mpsc::UnboundedReceiver<HealthChange>,
}

impl HealthChanges {
    /// The next change; `None` once every board is gone.
    pub async fn recv(&mut self) -> Option<HealthChange> {
        self.rx.recv().await
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Option<HealthChange> {
        self.rx.try_recv().ok()
    }
}

impl HealthBoard {
    /// A board on which every GPU is healthy, and the channel its changes
    /// go to.
    pub fn new() -> (HealthBoard, HealthChanges) {
        let (changes, rx) = mpsc::unbounded_channel();
        let board = HealthBoard {
            inner: Arc::default(),
            changes,
        };
        (board, HealthChanges { rx })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, GpuHealth>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in one driver event.
    pub fn on_event(&self, event: &HealthEvent) {
        match event.kind {
            HealthEventKind::Xid(code) => {
                self.lock()
                    .entry(event.uuid.clone())
                    .or_default()
                    .xid_errors += 1;
                match fatal_xid(code) {
                    Some(what) => self.fail(&event.uuid, format!("XID {code}: {what}")),
                    None => info!(gpu = %event.uuid, xid = code, "non-fatal XID error"),
                }
            }
            HealthEventKind::UncorrectableEcc => {
                self.fail(&event.uuid, "uncorrectable ECC error".into());
            }
            HealthEventKind::Reset => self.recover(&event.uuid),
        }
    }

    /// Takes in one telemetry sample.
    pub fn on_sample(&self, sample: &GpuSample) {
        if let Some(reason) = sample_fault(sample) {
            self.fail(&sample.uuid, reason);
        }
    }

    fn fail(&self, uuid: &str, reason: String) {
        let mut board = self.lock();
        let gpu = board.entry(uuid.to_owned()).or_default();
        if gpu.fault.is_some() {
            // The first fault is the one to fix; later ones follow from it.
            return;
        }
        warn!(gpu = %uuid, %reason, "GPU unhealthy");
        gpu.fault = Some(reason.clone());
        let _ = self.changes.send(HealthChange {
            uuid: uuid.to_owned(),
            healthy: false,
            reason,
        });
    }

    fn recover(&self, uuid: &str) {
        let mut board = self.lock();
        let gpu = board.entry(uuid.to_owned()).or_default();
        if gpu.fault.take().is_some() {
            info!(gpu = %uuid, "GPU reset; healthy again");
            let _ = self.changes.send(HealthChange {
                uuid: uuid.to_owned(),
                healthy: true,
                reason: String::new(),
            });
        }
    }

    /// Why `uuid` is unhealthy; `None` when it is healthy.
    pub fn fault(&self, uuid: &str) -> Option<String> {
        self.lock().get(uuid).and_then(|g| g.fault.clone())
    }

    /// XID errors seen on `uuid` since the agent started.
    pub fn xid_errors(&self, uuid: &str) -> u64 {
        self.lock().get(uuid).map_or(0, |g| g.xid_errors)
    }

    /// Marks each of `gpus` healthy or not as the board has it.
    pub fn overlay(&self, gpus: &mut [GpuInfo]) {
        let board = self.lock();
        for gpu in gpus {
            if let Some(reason) = board.get(&gpu.uuid).and_then(|g| g.fault.as_ref()) {
                gpu.healthy = false;
                gpu.health_reason = Some(reason.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::RemappedRows;

    fn event(uuid: &str, kind: HealthEventKind) -> HealthEvent {
        HealthEvent {
            uuid: uuid.into(),
            kind,
        }
    }

    #[test]
    fn fatal_xid_marks_unhealthy_until_reset_and_reports_each_change_once() {
        let (board, mut changes) = HealthBoard::new();
        board.on_event(&event("GPU-a", HealthEventKind::Xid(13)));
        assert_eq!(board.fault("GPU-a"), None);
        assert_eq!(changes.try_recv(), None);

        board.on_event(&event("GPU-a", HealthEventKind::Xid(79)));
        board.on_event(&event("GPU-a", HealthEventKind::UncorrectableEcc));
        assert_eq!(
            board.fault("GPU-a").as_deref(),
            Some("XID 79: GPU has fallen off the bus")
        );
        assert_eq!(board.xid_errors("GPU-a"), 2);
        assert_eq!(
            changes.try_recv(),
            Some(HealthChange {
                uuid: "GPU-a".into(),
                healthy: false,
                reason: "XID 79: GPU has fallen off the bus".into(),
            })
        );
        assert_eq!(changes.try_recv(), None, "a second fault is not news");

        let mut gpus = vec![
            GpuInfo::basic("GPU-a".into(), 0, "A100".into(), 1),
            GpuInfo::basic("GPU-b".into(), 1, "A100".into(), 1),
        ];
        board.overlay(&mut gpus);
        assert_eq!(
            gpus.iter()
                .map(|g| (g.healthy, g.health_reason.as_deref()))
                .collect::<Vec<_>>(),
            [
                (false, Some("XID 79: GPU has fallen off the bus")),
                (true, None)
            ]
        );

        board.on_event(&event("GPU-a", HealthEventKind::Reset));
        assert_eq!(board.fault("GPU-a"), None);
        assert_eq!(
            changes.try_recv(),
            Some(HealthChange {
                uuid: "GPU-a".into(),
                healthy: true,
                reason: String::new(),
            })
        );
        board.on_event(&event("GPU-b", HealthEventKind::Reset));
        assert_eq!(
            changes.try_recv(),
            None,
            "a healthy GPU's reset is not news"
        );
    }

    #[test]
    fn samples_show_ecc_retirement_remapping_and_lost_gpus() {
        let clean = GpuSample {
            uuid: "GPU-a".into(),
            ecc_volatile_uncorrected: Some(0),
            ..Default::default()
        };
        assert_eq!(sample_fault(&clean), None);
        let ecc = GpuSample {
            ecc_volatile_uncorrected: Some(2),
            ..clean.clone()
        };
        assert_eq!(
            sample_fault(&ecc).as_deref(),
            Some("2 uncorrectable ECC errors since the driver loaded")
        );
        let retire = GpuSample {
            retired_pages_pending: true,
            ..clean.clone()
        };
        assert!(sample_fault(&retire)
            .unwrap()
            .contains("pending retirement"));
        let remap = |pending, failed| GpuSample {
            remapped_rows: Some(RemappedRows {
                correctable: 3,
                uncorrectable: 1,
                pending,
                failed,
            }),
            ..clean.clone()
        };
        assert_eq!(
            sample_fault(&remap(false, false)),
            None,
            "rows remapped and in effect"
        );
        assert_eq!(
            sample_fault(&remap(true, false)).as_deref(),
            Some("memory rows are pending remapping; the GPU needs a reset")
        );
        assert!(sample_fault(&remap(true, true))
            .unwrap()
            .starts_with("row remapping failed"));
        let throttled = GpuSample {
            throttle_reasons: vec!["hw_thermal_slowdown".into()],
            ..clean.clone()
        };
        assert_eq!(sample_fault(&throttled), None, "throttling is not a fault");
        let lost = GpuSample {
            lost: true,
            ..clean
        };
        let (board, mut changes) = HealthBoard::new();
        board.on_sample(&lost);
        assert!(changes
            .try_recv()
            .unwrap()
            .reason
            .contains("fallen off the bus"));
    }
}
