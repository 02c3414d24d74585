//! The crate graph is part of the architecture (docs/architecture.md,
//! "Crates"): the core stays pure, and each crate depends only on the
//! crates below it. `cargo metadata` gives the resolved graph; these tests
//! fail the build when a change breaks either rule.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates that do I/O, run tasks or talk to the network: none of them may
/// reach `edupool-core`, however indirectly.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-stream",
    "mio",
    "socket2",
    "tonic",
    "prost",
    "hyper",
    "hyper-util",
    "h2",
    "http",
    "tower",
    "axum",
    "rustls",
    "redb",
    "raft",
    "protobuf",
    "prometheus",
    "nix",
    "rustix",
    "tempfile",
    "tracing",
    "slog",
    "nvml-wrapper",
    "rand",
    "getrandom",
    "clap",
    "serde_yaml",
    "toml",
    "x509-parser",
    "rcgen",
    "parking_lot",
];

/// Which workspace crate may depend on which (normal dependencies). A crate
/// missing here is not yet part of the workspace's graph.
const MAY_DEPEND_ON: &[(&str, &[&str])] = &[
    ("edupool-core", &[]),
    ("edupool-identity", &[]),
    ("edupool-proto", &[]),
    ("edupool-table", &[]),
    (
        "edupool-raft",
        &["edupool-core", "edupool-proto", "edupool-identity"],
    ),
    (
        "edupool-scheduler",
        &[
            "edupool-core",
            "edupool-raft",
            "edupool-proto",
            "edupool-identity",
            "edupool-table",
        ],
    ),
    ("edupool-agent", &["edupool-proto", "edupool-table"]),
    (
        "edupoolctl",
        &["edupool-proto", "edupool-identity", "edupool-table"],
    ),
    (
        "edupool-sim",
        &[
            "edupool-core",
            "edupool-scheduler",
            "edupool-agent",
            "edupoolctl",
            "edupool-proto",
            "edupool-table",
        ],
    ),
];

struct Graph {
    names: BTreeMap<String, String>,
    normal_deps: BTreeMap<String, Vec<String>>,
    workspace: BTreeSet<String>,
}

fn graph() -> Graph {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (text(&p["id"]), text(&p["name"])))
        .collect();
    let workspace = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(text)
        .collect();
    let normal_deps = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| is_normal(d))
                .map(|d| text(&d["pkg"]))
                .collect();
            (text(&n["id"]), deps)
        })
        .collect();
    Graph {
        names,
        normal_deps,
        workspace,
    }
}

fn text(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

/// A dependency used by the crate's code (not only by its tests or build
/// script).
fn is_normal(dep: &Value) -> bool {
    dep["dep_kinds"]
        .as_array()
        .expect("dep_kinds")
        .iter()
        .any(|k| k["kind"].is_null())
}

impl Graph {
    fn id(&self, name: &str) -> Option<&String> {
        self.workspace.iter().find(|id| self.names[*id] == name)
    }

    /// Every crate `name` needs to build, however indirectly.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = self.id(name).into_iter().collect();
        while let Some(id) = todo.pop() {
            for dep in &self.normal_deps[id] {
                if seen.insert(self.names[dep].clone()) {
                    todo.push(dep);
                }
            }
        }
        seen
    }
}

#[test]
fn the_core_depends_on_no_io_or_async_crate() {
    let g = graph();
    let closure = g.closure("edupool-core");
    let bad: Vec<&str> = NOT_IN_CORE
        .iter()
        .copied()
        .filter(|c| closure.contains(*c))
        .collect();
    assert!(
        bad.is_empty(),
        "edupool-core must stay pure, but now needs {bad:?} (all it needs: {closure:?})"
    );
    let inner: Vec<&String> = closure
        .iter()
        .filter(|c| c.starts_with("edupool"))
        .collect();
    assert!(inner.is_empty(), "edupool-core depends on {inner:?}");
}

#[test]
fn workspace_crates_depend_only_downwards() {
    let g = graph();
    let rules: BTreeMap<&str, &[&str]> = MAY_DEPEND_ON.iter().copied().collect();
    for id in &g.workspace {
        let name = g.names[id].as_str();
        if name == "edupool-tests" {
            continue; // the end-to-end tests start everything
        }
        let allowed = rules.get(name).unwrap_or_else(|| {
            panic!("{name} is not in MAY_DEPEND_ON: add it, and to docs/architecture.md")
        });
        for dep in &g.normal_deps[id] {
            let dep = g.names[dep].as_str();
            let inner = g.workspace.iter().any(|w| g.names[w] == dep);
            assert!(
                !inner || allowed.contains(&dep),
                "{name} depends on {dep}, which docs/architecture.md does not allow"
            );
        }
    }
}
