//! The scale load, scaled down to run in CI: 500 simulated nodes and
//! 20,000 single-GPU jobs through a real `edupool-scheduler serve`. It
//! checks correctness only (speed is a benchmark, docs/benchmarks.md):
//! every job placed exactly once, none lost, and the scheduler's counts
//! match what the load clients and the agents saw.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use edupool_proto::v1 as pb;
use edupool_tests::scale::{self, Fleet, FleetConfig, LoadConfig, ScaleCluster, Tally};
use edupoolctl::client::{AdminClient, JobClient};

const NODES: usize = 500;
const GPUS_PER_NODE: u32 = 8;
const JOBS: u64 = 20_000;

#[test]
fn twenty_thousand_jobs_on_500_nodes_each_placed_exactly_once() -> Result<()> {
    let cluster = ScaleCluster::start(1, None, &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let leader = cluster.leader(Duration::from_secs(30)).await?.endpoint();
        let token = scale::create_tenant(&leader, "load").await?;
        let tally = Arc::new(Tally::new(JOBS));
        let mut fleet = Fleet::connect(
            FleetConfig {
                endpoint: leader.clone(),
                nodes: NODES,
                gpus_per_node: GPUS_PER_NODE,
                model: "A100-80GB".into(),
                run_time: Duration::ZERO,
                prefix: "sim-".into(),
            },
            tally.clone(),
        )
        .await?;
        let load = LoadConfig {
            endpoint: leader.clone(),
            token,
            clients: 64,
            connections: 4,
            rate: None,
            // Arrays of 10: each job of each array must be placed once.
            array: 10,
        };
        scale::submit_all(load, tally.clone()).await?;
        ensure!(
            tally.refused.load(Ordering::Relaxed) == 0,
            "a submission was refused: {:?}",
            tally.first_refusal()
        );
        ensure!(tally.submitted.load(Ordering::Relaxed) == JOBS);

        // Every job placed, started and reported exited.
        let deadline = Instant::now() + Duration::from_secs(300);
        while tally.exited.load(Ordering::Relaxed) < JOBS {
            fleet.check()?;
            if Instant::now() > deadline {
                bail!(
                    "after 300s only {} of {JOBS} jobs placed, {} exited",
                    tally.placed.load(Ordering::Relaxed),
                    tally.exited.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for seq in 0..JOBS {
            ensure!(
                tally.starts(seq) == 1,
                "job {seq} was started {} times",
                tally.starts(seq)
            );
        }
        ensure!(tally.foreign.load(Ordering::Relaxed) == 0);
        ensure!(tally.placed.load(Ordering::Relaxed) == JOBS);

        // The scheduler agrees: every job succeeded on its first attempt,
        // each number once.
        let mut jobs = scale::admin_clients(&leader).await?.jobs;
        let deadline = Instant::now() + Duration::from_secs(60);
        let all = loop {
            // A replica this busy may briefly answer UNAVAILABLE: retry.
            let all = match all_jobs(&mut jobs).await {
                Ok(all) => all,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("listing jobs: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let done = all
                .iter()
                .filter(|j| j.state == pb::JobState::Succeeded as i32)
                .count();
            if done == JOBS as usize || Instant::now() > deadline {
                break all;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(
            all.len() == JOBS as usize,
            "the scheduler holds {} jobs",
            all.len()
        );
        let mut seen = BTreeSet::new();
        for j in &all {
            ensure!(
                j.state == pb::JobState::Succeeded as i32 && j.attempt == 1,
                "job {} ended {:?} after {} attempts: {}",
                j.id,
                pb::JobState::try_from(j.state),
                j.attempt,
                j.reason
            );
            let seq = j
                .spec
                .as_ref()
                .and_then(|s| scale::seq_of(&s.env))
                .context("a numbered job")?;
            ensure!(seen.insert(seq), "job number {seq} held twice");
        }
        ensure!(seen.len() == JOBS as usize);

        // And every GPU is free again.
        let mut admin = scale::admin_clients(&leader).await?.admin;
        let deadline = Instant::now() + Duration::from_secs(60);
        let nodes = loop {
            match all_nodes(&mut admin).await {
                Ok(all) => break all,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("listing nodes: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        ensure!(nodes.len() == NODES);
        let busy = nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .filter(|g| !g.assigned_job.is_empty())
            .count();
        ensure!(busy == 0, "{busy} GPUs still held");
        drop(fleet);
        Ok(())
    })
}

/// Every job in full (the seq is in its env), page by page.
async fn all_jobs(jobs: &mut JobClient) -> Result<Vec<pb::Job>, tonic::Status> {
    let (mut all, mut page_token) = (vec![], String::new());
    loop {
        let req = pb::ListJobsRequest {
            page_size: 1000,
            page_token,
            view: pb::JobView::Full as i32,
            ..Default::default()
        };
        let page = jobs.list_jobs(req).await?.into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Every node, page by page.
async fn all_nodes(admin: &mut AdminClient) -> Result<Vec<pb::Node>, tonic::Status> {
    let (mut all, mut page_token) = (vec![], String::new());
    loop {
        let req = pb::ListNodesRequest {
            page_size: 1000,
            page_token,
        };
        let page = admin.list_nodes(req).await?.into_inner();
        all.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}
