//! The telemetry sampler and the health event watcher.
//!
//! Both call the inventory, whose calls block (NVML), so the sampler runs
//! each round on a blocking thread and the watcher is a blocking loop of
//! its own, waiting for driver events a short while at a time so that it
//! notices shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error_chain;
use crate::health::HealthBoard;
use crate::inventory::{GpuInventory, GpuSample, InventoryError};

/// The latest round of samples, for the session's summaries.
pub(crate) type TelemetryFeed = watch::Receiver<Vec<GpuSample>>;
use crate::metrics::AgentMetrics;

/// How long one wait for driver events lasts before the watcher looks at
/// the shutdown token again.
const EVENT_WAIT: Duration = Duration::from_millis(250);
/// The pause after a failed wait for events, so a broken driver does not
/// spin the watcher.
const EVENT_RETRY: Duration = Duration::from_secs(1);

/// Samples every GPU every `interval`: feeds the health board and the
/// metrics, until `stop` is cancelled.
pub(crate) async fn run_sampler(
    inventory: Arc<dyn GpuInventory>,
    board: HealthBoard,
    metrics: Arc<AgentMetrics>,
    feed: watch::Sender<Vec<GpuSample>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inventory_known = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let source = Arc::clone(&inventory);
        let round = tokio::task::spawn_blocking(move || {
            let gpus = if inventory_known {
                None
            } else {
                Some(source.gpus()?)
            };
            Ok::<_, InventoryError>((gpus, source.sample()?))
        });
        match round.await {
            Ok(Ok((gpus, samples))) => {
                if let Some(gpus) = gpus {
                    metrics.set_inventory(&gpus);
                    inventory_known = true;
                }
                for sample in &samples {
                    board.on_sample(sample);
                }
                metrics.observe(&samples, &board);
                // Nobody listening (no session task) is fine.
                let _ = feed.send(samples);
            }
            Ok(Err(err)) => warn!(error = %error_chain(&err), "GPU telemetry not read"),
            Err(err) => warn!(error = %err, "GPU telemetry task failed"),
        }
    }
}

/// Waits for driver health events and hands them to the board, until
/// `stop` is cancelled. Blocking: run it with `spawn_blocking`.
pub(crate) fn watch_events(
    inventory: Arc<dyn GpuInventory>,
    board: HealthBoard,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        match inventory.wait_for_events(EVENT_WAIT) {
            Ok(events) => {
                for event in &events {
                    debug!(gpu = %event.uuid, kind = ?event.kind, "GPU health event");
                    board.on_event(event);
                }
            }
            Err(InventoryError::Unavailable { .. }) => return,
            Err(err) => {
                warn!(error = %error_chain(&err), "waiting for GPU events failed");
                std::thread::sleep(EVENT_RETRY);
            }
        }
    }
}
