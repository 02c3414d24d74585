//! Image import: OCI layouts built here, layer by layer, with whiteouts,
//! damaged digests and entries that try to write outside the root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::import::{import, ImportError};

/// One entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Link(&'a str, &'a str),
    /// A regular file whose name is written into the header as is, past
    /// the checks the tar builder makes.
    Raw(&'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, text) => {
                h.set_size(text.len() as u64);
                b.append_data(&mut h, p, text.as_bytes()).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Raw(name) => {
                h.set_size(0);
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut z = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// Writes a blob; its digest.
fn blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// An OCI image layout of these layers (the first gzip-compressed).
fn layout(dir: &Path, layers: &[Vec<u8>]) -> PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let config = blob(&layout, br#"{"architecture":"amd64","os":"linux"}"#);
    let descriptors: Vec<String> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (bytes, kind) = if i == 0 {
                (gzip(l), "tar+gzip")
            } else {
                (l.clone(), "tar")
            };
            let digest = blob(&layout, &bytes);
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.{kind}","digest":"{digest}","size":{}}}"#,
                bytes.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
        descriptors.join(",")
    );
    let manifest = blob(&layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":1}}]}}"#
    );
    fs::write(layout.join("index.json"), index).unwrap();
    layout
}

/// The store holds nothing but the listed images (no leftover temp dir).
fn store_holds(store: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(store)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    assert_eq!(found, names);
}

#[test]
fn a_layout_of_two_layers_is_applied_in_order_with_its_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let base = layer(&[
        E::Dir("bin"),
        E::File("bin/busybox", "bb"),
        E::Link("bin/sh", "busybox"),
        E::Dir("etc"),
        E::File("etc/a", "a"),
        E::File("etc/b", "b"),
        E::Dir("opt/cache"),
        E::File("opt/cache/old", "old"),
    ]);
    let top = layer(&[
        E::File("etc/.wh.a", ""),
        E::File("etc/c", "c"),
        E::File("opt/cache/.wh..wh..opq", ""),
        E::File("opt/cache/new", "new"),
    ]);
    let source = layout(dir.path(), &[base, top]);
    let store = dir.path().join("store");
    let done = import(&store, "busybox:1.36", &source).unwrap();
    assert_eq!(done.layers, 2);
    let root = store.join("busybox:1.36/rootfs");
    assert_eq!(done.rootfs, root);
    assert!(!root.join("etc/a").exists(), "whited out");
    assert!(!root.join(".wh.a").exists() && !root.join("etc/.wh.a").exists());
    assert_eq!(fs::read_to_string(root.join("etc/b")).unwrap(), "b");
    assert_eq!(fs::read_to_string(root.join("etc/c")).unwrap(), "c");
    assert!(!root.join("opt/cache/old").exists(), "opaque directory");
    assert_eq!(
        fs::read_to_string(root.join("opt/cache/new")).unwrap(),
        "new"
    );
    assert!(!root.join("opt/cache/.wh..wh..opq").exists());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    store_holds(&store, &["busybox:1.36"]);
    // A second import under the same name replaces nothing.
    let again = import(&store, "busybox:1.36", &source).unwrap_err();
    assert!(matches!(again, ImportError::Exists { .. }), "{again}");
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = layout(
        dir.path(),
        &[layer(&[E::File("a", "a")]), layer(&[E::File("b", "b")])],
    );
    // Damage the second (uncompressed) layer: its content changes, its
    // name (the digest the manifest lists) does not.
    let blobs = source.join("blobs/sha256");
    let digest = hex::encode(Sha256::digest(layer(&[E::File("b", "b")])));
    fs::write(blobs.join(&digest), layer(&[E::File("b", "evil")])).unwrap();
    let store = dir.path().join("store");
    let err = import(&store, "img", &source).unwrap_err();
    match &err {
        ImportError::DigestMismatch { digest: d, .. } => assert!(d.ends_with(&digest), "{err}"),
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    store_holds(&store, &[]);
}

#[test]
fn entries_that_would_write_outside_the_root_are_refused() {
    let cases: [(&str, Vec<Vec<u8>>, &str); 3] = [
        (
            "parent",
            vec![layer(&[E::Raw("../escaped")])],
            "climbs out with '..'",
        ),
        (
            "absolute",
            vec![layer(&[E::Raw("/tmp/escaped")])],
            "is absolute",
        ),
        (
            "link",
            vec![layer(&[E::Dir("d"), E::Link("d/up", "../../..")])],
            "climbs above the root",
        ),
    ];
    for (name, layers, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let source = layout(dir.path(), &layers);
        let store = dir.path().join("store");
        let err = import(&store, name, &source).unwrap_err();
        assert!(
            matches!(err, ImportError::Unsafe { .. }) && err.to_string().contains(why),
            "{name}: {err}"
        );
        store_holds(&store, &[]);
        assert!(!dir.path().join("escaped").exists());
    }
}

#[test]
fn an_absolute_link_is_followed_inside_the_root_never_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.to_str().unwrap().to_owned();
    // A lower layer links `data` to an absolute path that exists on this
    // machine; a higher one writes through it: the file lands in the
    // image's own copy of that path.
    let source = layout(
        dir.path(),
        &[
            layer(&[E::Link("data", &target)]),
            layer(&[E::File("data/x", "x")]),
        ],
    );
    let store = dir.path().join("store");
    import(&store, "img", &source).unwrap();
    assert!(!outside.join("x").exists(), "written outside the root");
    let inside = store
        .join("img/rootfs")
        .join(target.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside.join("x")).unwrap(), "x");
}

#[test]
fn a_root_filesystem_directory_or_tarball_is_imported_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/busybox"), "bb").unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).unwrap();
    let tarball = dir.path().join("rootfs.tar.gz");
    fs::write(&tarball, gzip(&layer(&[E::File("hello", "hi")]))).unwrap();
    let store = dir.path().join("store");
    import(&store, "tree", &tree).unwrap();
    import(&store, "tarball", &tarball).unwrap();
    let tree_root = store.join("tree/rootfs");
    assert_eq!(
        fs::read_to_string(tree_root.join("bin/busybox")).unwrap(),
        "bb"
    );
    assert!(tree_root
        .join("bin/sh")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    assert_eq!(
        fs::read_to_string(store.join("tarball/rootfs/hello")).unwrap(),
        "hi"
    );
    let bad = import(&store, ".hidden", &tree).unwrap_err();
    assert!(matches!(bad, ImportError::BadName(_)), "{bad}");
    store_holds(&store, &["tarball", "tree"]);
}
