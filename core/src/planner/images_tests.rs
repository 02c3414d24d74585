//! Images and host jobs in placement: a job with an image goes only to
//! nodes that report it, one without only to nodes that allow host jobs,
//! and `explain` says which held it back.

use super::tests::{job, Pool};
use super::*;
use crate::state::tests_support::gpus;
use crate::state::{JobState, Rejection};

/// Connects a one-GPU node with these images and host-job permission.
fn node(p: &mut Pool, name: &str, images: &[&str], allows_host_jobs: bool) {
    p.ok(Command::NodeConnected {
        node: name.into(),
        gpus: gpus(name, 1),
        agent_version: "test".into(),
        images: images.iter().map(|i| i.to_string()).collect(),
        allows_host_jobs,
        cpu_millicores: 0,
        memory_bytes: 0,
    });
}

fn with_image(image: Option<&str>) -> crate::state::JobSpec {
    let mut spec = job(1, JobClass::Batch);
    spec.image = image.map(String::from);
    spec
}

fn placed_on(p: &Pool, id: JobId) -> Option<String> {
    p.s.job(id)
        .filter(|j| j.state.is_placed())
        .map(|j| j.tasks[0].node.clone())
}

#[test]
fn image_jobs_go_to_nodes_with_their_image_and_host_jobs_where_allowed() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "a-image", &["pytorch-2.3", "busybox"], false);
    node(&mut p, "b-host", &[], true);
    // Submitted first, so a name-order packer would put it on a-image.
    let host = p.submit("zju", with_image(None));
    let image = p.submit("zju", with_image(Some("pytorch-2.3")));
    let missing = p.submit("zju", with_image(Some("tensorflow")));
    let second = p.submit("zju", with_image(Some("pytorch-2.3")));
    let third = p.submit("zju", with_image(Some("pytorch-2.3")));
    p.round();
    assert_eq!(placed_on(&p, host).as_deref(), Some("b-host"));
    assert_eq!(placed_on(&p, image).as_deref(), Some("a-image"));
    assert_eq!(p.s.job(missing).unwrap().state, JobState::Pending);
    assert_eq!(p.s.job(second).unwrap().state, JobState::Pending);
    let why = p.explain(missing);
    assert!(
        why.starts_with("image tensorflow is on no schedulable node"),
        "{why}"
    );
    // The first job blocked behind busy nodes holds the reservation;
    // the next is told its image's nodes are all busy.
    assert!(p.explain(second).starts_with("reservation:"));
    let why = p.explain(third);
    assert!(
        why.starts_with("capacity:") && why.ends_with("image pytorch-2.3 is on 1 node, all busy"),
        "{why}"
    );
}

#[test]
fn a_host_job_waits_when_no_node_allows_host_jobs() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "a", &["busybox"], false);
    let host = p.submit("zju", with_image(None));
    assert_eq!(p.round(), vec![]);
    let why = p.explain(host);
    assert!(
        why.starts_with("no schedulable node runs jobs without an image"),
        "{why}"
    );
    // Once a node brings the image it asks for, the job runs there.
    let boxed = p.submit("zju", with_image(Some("busybox")));
    p.round();
    assert_eq!(placed_on(&p, boxed).as_deref(), Some("a"));
    assert_eq!(p.s.job(host).unwrap().state, JobState::Pending);
}

#[test]
fn a_job_whose_image_is_nowhere_neither_preempts_nor_reserves() {
    let mut p = Pool::new(&["zju", "hdu"]);
    node(&mut p, "a", &["busybox"], true);
    p.ok(Command::LabelNode {
        node: "a".into(),
        labels: crate::state::NodeLabels {
            owner: Some("zju".into()),
            ..Default::default()
        },
    });
    // hdu borrows zju's only GPU.
    let borrower = p.submit("hdu", with_image(None));
    p.round();
    assert_eq!(placed_on(&p, borrower).as_deref(), Some("a"));
    // zju is below its guarantee, but its job needs an image no node has:
    // preempting hdu would not make room for it.
    let owner = p.submit("zju", with_image(Some("tensorflow")));
    assert_eq!(p.round(), vec![]);
    assert_eq!(p.s.job(borrower).unwrap().state, JobState::Running);
    assert!(p.explain(owner).starts_with("image tensorflow is on no"));
}

#[test]
fn a_placement_on_a_node_without_the_image_is_rejected() {
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "a", &["busybox"], false);
    let host = p.submit("zju", with_image(None));
    let other = p.submit("zju", with_image(Some("pytorch-2.3")));
    for (id, why) in [
        (host, "it does not run jobs without an image"),
        (other, "it does not have image pytorch-2.3"),
    ] {
        let err =
            p.s.apply(
                Command::PlaceJob {
                    job: id,
                    tasks: vec![TaskPlacement {
                        node: "a".into(),
                        gpus: vec![crate::state::tests_support::uuid("a", 0)],
                    }],
                    capacity: Capacity::Guaranteed,
                },
                p.now,
            )
            .unwrap_err();
        assert!(matches!(err, Rejection::BadPlacement { .. }), "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(p.s.job(id).unwrap().state, JobState::Pending);
    }
}

#[test]
fn a_node_connected_entry_from_before_images_allows_host_jobs() {
    // As an agent that predates images wrote it into the log.
    let old = r#"{"type":"node_connected","node":"n1","gpus":[],"agent_version":"0.1.0"}"#;
    let cmd: Command = serde_json::from_str(old).unwrap();
    let Command::NodeConnected {
        images,
        allows_host_jobs,
        ..
    } = &cmd
    else {
        panic!("{cmd:?}")
    };
    assert!(images.is_empty() && *allows_host_jobs);
    // And a node record of a snapshot from then.
    let mut p = Pool::new(&["zju"]);
    node(&mut p, "n1", &[], false);
    let mut record = serde_json::to_value(p.s.node("n1").unwrap()).unwrap();
    let fields = record.as_object_mut().unwrap();
    fields.remove("images");
    fields.remove("allows_host_jobs");
    let read: crate::state::Node = serde_json::from_value(record).unwrap();
    assert!(read.allows_host_jobs && read.images.is_empty());
}
