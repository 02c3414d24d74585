//! Images end to end, with the real binaries: an image imported with
//! `edupool-agent image import` into one node's store is reported by its
//! agent; a job asking for it lands on that node and not on the node
//! without it; a job asking for an image no node has stays pending and
//! `job explain` says why; `image list`, `node show` and `tenant show`
//! show the images and the tenant's uid offset.
//!
//! This checks placement, not the run (tests/tests/sandbox.rs runs
//! containers). An agent reports its images only when it has a container
//! runtime, so the test needs root and crun (`.ci/run` installs it);
//! without them it says why and passes, except under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use edupool_tests::{bin, eventually, Scheduler, ADMIN_TOKEN};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Imports a tiny root filesystem directory as image `name` into `store`.
fn import(store: &Path, name: &str, scratch: &Path) -> Result<()> {
    let tree = scratch.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::write(tree.join("bin/hello"), "#!/bin/sh\necho hello\n")?;
    let out = Command::new(bin("edupool-agent"))
        .args(["image", "import", "--image-store"])
        .arg(store)
        .args(["--name", name])
        .arg(&tree)
        .output()?;
    ensure!(
        out.status.success(),
        "image import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(store.join(name).join("rootfs/bin/hello").is_file());
    Ok(())
}

fn submit(s: &Scheduler, token: &str, image: Option<&str>) -> Result<String> {
    let mut args = vec!["job", "submit", "--gpus", "1"];
    if let Some(image) = image {
        args.extend(["--image", image]);
    }
    args.extend(["--", "/bin/hello"]);
    let v = s.ctl_json(token, &args)?;
    Ok(v["id"].as_str().expect("an id").to_string())
}

/// Why agents here cannot report images; `None` when they can.
fn missing_prerequisite() -> Option<&'static str> {
    // /proc/self belongs to the process's effective user.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        return Some("not root");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("crun").is_file()) {
        return Some("crun is not installed (apt-get install crun)");
    }
    None
}

#[test]
fn an_image_job_lands_on_the_node_with_its_image_and_a_missing_one_is_explained() -> Result<()> {
    if let Some(why) = missing_prerequisite() {
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot test images: {why}"
        );
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let s = Scheduler::start(&dir.path().join("scheduler"))?;
    let with = dir.path().join("store-with");
    let without = dir.path().join("store-without");
    std::fs::create_dir_all(&without)?;
    import(&with, "busybox:1.36", dir.path())?;
    let store_arg = |p: &Path| p.to_str().expect("a UTF-8 path").to_string();
    let (with_arg, without_arg) = (store_arg(&with), store_arg(&without));
    // `b-image` sorts after `a-plain`: a packer that ignored images would
    // put the first job on `a-plain`.
    let _plain = s.agent_with(
        "a-plain",
        "1xA100-80GB",
        &dir.path().join("agent-plain"),
        &["--image-store", &without_arg],
    )?;
    let _image = s.agent_with(
        "b-image",
        "1xA100-80GB",
        &dir.path().join("agent-image"),
        &["--image-store", &with_arg],
    )?;
    let images = eventually("both agents to report", WAIT, || {
        let v = s.ctl_json(ADMIN_TOKEN, &["image", "list"]).ok()?;
        let nodes = s.ctl_json(ADMIN_TOKEN, &["node", "list"]).ok()?;
        (nodes.as_array()?.len() == 2 && v["images"].as_array()?.len() == 1).then_some(v)
    })?;
    assert_eq!(images["images"][0]["image"], "busybox:1.36");
    assert_eq!(images["images"][0]["nodes"], serde_json::json!(["b-image"]));
    let shown = s.ctl_json(ADMIN_TOKEN, &["node", "show", "b-image"])?;
    assert_eq!(shown["images"], serde_json::json!(["busybox:1.36"]));
    let shown = s.ctl_json(ADMIN_TOKEN, &["node", "show", "a-plain"])?;
    assert_eq!(shown["images"], serde_json::json!([]));

    let created = s.ctl_json(ADMIN_TOKEN, &["tenant", "create", "zju"])?;
    let zju = created["token"].as_str().expect("a token").to_string();
    let tenant = eventually("zju's uid offset", WAIT, || {
        let t = s.ctl_json(ADMIN_TOKEN, &["tenant", "show", "zju"]).ok()?;
        (t["uid_offset"].as_u64()? > 0).then_some(t)
    })?;
    assert_eq!(tenant["uid_offset"], 1);

    let boxed = submit(&s, &zju, Some("busybox:1.36"))?;
    let placed = eventually(&format!("{boxed} to be placed"), WAIT, || {
        let j = s.ctl_json(&zju, &["job", "get", &boxed]).ok()?;
        j["node"].as_str().map(String::from)
    })?;
    assert_eq!(placed, "b-image");

    let missing = submit(&s, &zju, Some("tensorflow-2.16"))?;
    let why: Value = eventually(&format!("{missing} to be explained"), WAIT, || {
        let v = s.ctl_json(&zju, &["job", "explain", &missing]).ok()?;
        v["explanation"]
            .as_str()?
            .starts_with("image tensorflow-2.16 is on no schedulable node")
            .then_some(v)
    })?;
    assert_eq!(why["state"], "pending");
    let j = s.ctl_json(&zju, &["job", "get", &missing])?;
    assert_eq!(j["state"], "pending");
    assert_eq!(j["image"], "tensorflow-2.16");
    Ok(())
}
