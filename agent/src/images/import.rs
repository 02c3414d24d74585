//! `edupool-agent image import`: puts an image into the node's image store
//! as the unpacked root filesystem `STORE/NAME/rootfs/`, the form the
//! runtime driver runs jobs in.
//!
//! The source is an OCI image layout (a directory with `oci-layout` and
//! `index.json`, as `skopeo copy ... oci:DIR` or `docker save` + `skopeo`
//! write it), a root filesystem directory, or a root filesystem tarball
//! (optionally gzip-compressed). A layout's manifest, config and layers are
//! checked against their SHA-256 digests, and its layers applied in order
//! with OCI whiteouts (`.wh.NAME` removes NAME from the layers below,
//! `.wh..wh..opq` empties its directory of them).
//!
//! Nothing in an archive may write outside the image's root: absolute
//! paths and `..` are refused, links are resolved inside the root (a
//! symbolic link is followed as the job will see it, its absolute target
//! taken from the image's root), and a link whose target climbs above the
//! root is refused. The image is unpacked into a temporary directory in
//! the store (its name starts with `.`, so it is never listed as an
//! image) and renamed into place: a job never sees half an image.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid image name '{0}': use 1-128 letters, digits, '.', '_', '-' or ':', not starting with '.'")]
    BadName(String),
    #[error("image {name} is already in the store at {}; remove that directory first to replace it", path.display())]
    Exists { name: String, path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a valid {what}: {source}", path.display())]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the OCI layout has {0}")]
    Layout(String),
    #[error("blob {digest} does not match its digest (its content hashes to sha256:{actual}); the layout is damaged or was changed")]
    DigestMismatch { digest: String, actual: String },
    #[error("layer {layer}: entry '{path}' {why}; refusing the image")]
    Unsafe {
        layer: String,
        path: String,
        why: &'static str,
    },
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The image's root filesystem: `STORE/NAME/rootfs`.
    pub rootfs: PathBuf,
    /// Layers applied (1 for a root filesystem).
    pub layers: usize,
}

/// Imports `source` into `store` as image `name`.
pub fn import(store: &Path, name: &str, source: &Path) -> Result<Imported, ImportError> {
    // The store's rule (checked again by the scheduler when the agent
    // reports its images).
    if super::store::validate_image_name(name).is_err() {
        return Err(ImportError::BadName(name.to_owned()));
    }
    let dest = store.join(name);
    if dest.symlink_metadata().is_ok() {
        return Err(ImportError::Exists {
            name: name.to_owned(),
            path: dest,
        });
    }
    fs::create_dir_all(store).map_err(io_at(store))?;
    let temp = store.join(format!(".import-{name}-{}", std::process::id()));
    if temp.symlink_metadata().is_ok() {
        fs::remove_dir_all(&temp).map_err(io_at(&temp))?;
    }
    let rootfs = temp.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(io_at(&rootfs))?;
    let unpacked = unpack(source, &rootfs);
    let layers = match unpacked {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&temp, &dest) {
        let _ = fs::remove_dir_all(&temp);
        return Err(ImportError::Io {
            path: dest,
            source: e,
        });
    }
    Ok(Imported {
        rootfs: dest.join("rootfs"),
        layers,
    })
}

/// Unpacks whatever `source` is into `root`; the number of layers applied.
fn unpack(source: &Path, root: &Path) -> Result<usize, ImportError> {
    let meta = fs::metadata(source).map_err(io_at(source))?;
    if meta.is_dir() && source.join("index.json").is_file() && source.join("oci-layout").is_file() {
        return unpack_layout(source, root);
    }
    if meta.is_dir() {
        copy_tree(source, root)?;
        return Ok(1);
    }
    apply_layer(source, root, &source.display().to_string())?;
    Ok(1)
}

// ------------------------------------------------------------ OCI layout

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn unpack_layout(layout: &Path, root: &Path) -> Result<usize, ImportError> {
    let index_path = layout.join("index.json");
    let mut index: Index = read_json(&index_path, "OCI index")?;
    // A nested index (a multi-platform image) is followed one level down.
    let mut hops = 0;
    let manifest = loop {
        let first = match index.manifests.len() {
            0 => return Err(ImportError::Layout("no manifest in its index".into())),
            1 => index.manifests.remove(0),
            n => {
                return Err(ImportError::Layout(format!(
                    "{n} manifests in its index; copy one image (one platform) into the layout"
                )))
            }
        };
        let blob = verified_blob(layout, &first.digest)?;
        if INDEX_TYPES.contains(&first.media_type.as_str()) && hops == 0 {
            hops += 1;
            index = json_of(&blob, &first.digest, "OCI index")?;
            continue;
        }
        break json_of::<Manifest>(&blob, &first.digest, "OCI manifest")?;
    };
    verified_blob(layout, &manifest.config.digest)?;
    for layer in &manifest.layers {
        let path = blob_path(layout, &layer.digest)?;
        check_digest(&path, &layer.digest)?;
        apply_layer(&path, root, &layer.digest)?;
    }
    Ok(manifest.layers.len())
}

/// Where a blob of this digest lives in the layout; only `sha256:` with 64
/// hex digits is taken, so a digest can never name a path elsewhere.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImportError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(layout.join("blobs").join("sha256").join(hex))
        }
        _ => Err(ImportError::Layout(format!(
            "a blob digest '{digest}' that is not sha256:<64 hex digits>"
        ))),
    }
}

fn verified_blob(layout: &Path, digest: &str) -> Result<Vec<u8>, ImportError> {
    let path = blob_path(layout, digest)?;
    let bytes = fs::read(&path).map_err(io_at(&path))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !digest.ends_with(&actual) {
        return Err(ImportError::DigestMismatch {
            digest: digest.to_owned(),
            actual,
        });
    }
    Ok(bytes)
}

fn check_digest(path: &Path, digest: &str) -> Result<(), ImportError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_at(path))?;
    let actual = hex::encode(hasher.finalize());
    if !digest.ends_with(&actual) {
        return Err(ImportError::DigestMismatch {
            digest: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<T, ImportError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
        path: path.to_owned(),
        what,
        source,
    })
}

fn json_of<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    digest: &str,
    what: &'static str,
) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|source| ImportError::Json {
        path: PathBuf::from(digest),
        what,
        source,
    })
}

// ---------------------------------------------------------------- layers

/// The entries of a layer file, gzip-compressed or not (told by its first
/// bytes, not its media type: registries label them loosely).
fn entries_of(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ImportError> {
    let mut file = BufReader::new(File::open(path).map_err(io_at(path))?);
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io_at(path))?;
    file.rewind().map_err(io_at(path))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Only root can give files their owners; others unpack as themselves.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    Ok(archive)
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// Applies one layer to `root`: first its whiteouts, which remove what
/// the layers below put there (so a file this layer adds beside an opaque
/// marker stays), then its other entries.
fn apply_layer(path: &Path, root: &Path, layer: &str) -> Result<(), ImportError> {
    let unsafe_entry = |p: &Path, why| ImportError::Unsafe {
        layer: layer.to_owned(),
        path: p.display().to_string(),
        why,
    };
    for pass in [Pass::Whiteouts, Pass::Content] {
        let mut archive = entries_of(path)?;
        for entry in archive.entries().map_err(io_at(path))? {
            let mut entry = entry.map_err(io_at(path))?;
            let rel = entry.path().map_err(io_at(path))?.into_owned();
            let parts = relative_parts(&rel)
                .ok_or_else(|| unsafe_entry(&rel, "is absolute or climbs out with '..'"))?;
            let Some((leaf, dirs)) = parts.split_last() else {
                continue; // the root itself ("./")
            };
            let whiteout = leaf.strip_prefix(WHITEOUT);
            match (pass, whiteout) {
                (Pass::Whiteouts, Some(target)) => {
                    let dir = resolve(root, dirs)
                        .ok_or_else(|| unsafe_entry(&rel, "goes through a link out of the root"))?;
                    whiteout_in(&dir, target)?;
                }
                (Pass::Content, None) => {
                    let dir = resolve(root, dirs)
                        .ok_or_else(|| unsafe_entry(&rel, "goes through a link out of the root"))?;
                    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
                    let target = dir.join(leaf);
                    write_entry(&mut entry, root, &dir, &target)
                        .map_err(|e| e.into_import(&rel, layer))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Pass {
    Whiteouts,
    Content,
}

/// Removes `name` (or, for the opaque marker, everything) in `dir`.
fn whiteout_in(dir: &Path, name: &str) -> Result<(), ImportError> {
    if name == &OPAQUE[WHITEOUT.len()..] {
        let Ok(children) = fs::read_dir(dir) else {
            return Ok(());
        };
        for child in children {
            let child = child.map_err(io_at(dir))?.path();
            remove_any(&child)?;
        }
        return Ok(());
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Ok(());
    }
    remove_any(&dir.join(name))
}

fn remove_any(path: &Path) -> Result<(), ImportError> {
    remove_path(path).map_err(io_at(path))
}

/// Removes a file, a link (not what it points to) or a whole directory.
fn remove_path(path: &Path) -> io::Result<()> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// Why one entry could not be written.
enum EntryError {
    Unsafe(&'static str),
    Io(PathBuf, io::Error),
}

impl EntryError {
    fn into_import(self, rel: &Path, layer: &str) -> ImportError {
        match self {
            EntryError::Unsafe(why) => ImportError::Unsafe {
                layer: layer.to_owned(),
                path: rel.display().to_string(),
                why,
            },
            EntryError::Io(path, source) => ImportError::Io { path, source },
        }
    }
}

fn write_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    root: &Path,
    dir: &Path,
    target: &Path,
) -> Result<(), EntryError> {
    let io = |e: io::Error| EntryError::Io(target.to_owned(), e);
    let kind = entry.header().entry_type();
    // What is there already is replaced, never written through: a link
    // left by a lower layer is removed, not followed.
    let existing = target.symlink_metadata().ok();
    let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
    if existing.is_some() && !keep_dir {
        remove_path(target).map_err(io)?;
    }
    match kind {
        tar::EntryType::Symlink => {
            let link = entry
                .link_name()
                .map_err(io)?
                .ok_or_else(|| io(io::Error::other("a symbolic link without a target")))?;
            if climbs_out(root, dir, &link) {
                return Err(EntryError::Unsafe(
                    "is a symbolic link whose target climbs above the root",
                ));
            }
            std::os::unix::fs::symlink(&link, target).map_err(io)
        }
        tar::EntryType::Link => {
            let link = entry
                .link_name()
                .map_err(io)?
                .ok_or_else(|| io(io::Error::other("a hard link without a target")))?;
            let parts = relative_parts(&link).ok_or(EntryError::Unsafe(
                "is a hard link to an absolute path or out with '..'",
            ))?;
            let Some((leaf, dirs)) = parts.split_last() else {
                return Err(EntryError::Unsafe("is a hard link to the root"));
            };
            let source = resolve(root, dirs)
                .ok_or(EntryError::Unsafe(
                    "is a hard link through a link out of the root",
                ))?
                .join(leaf);
            fs::hard_link(&source, target).map_err(io)
        }
        // Devices come from the runtime, never from an image.
        tar::EntryType::Char | tar::EntryType::Block => Ok(()),
        _ => entry.unpack(target).map(|_| ()).map_err(io),
    }
}

/// The normal components of a relative path (`.` dropped); `None` when it
/// is absolute or has `..`.
fn relative_parts(path: &Path) -> Option<Vec<String>> {
    let mut parts = vec![];
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// Most symbolic links followed while resolving one path (as Linux).
const MAX_LINKS: usize = 40;

/// The directory `dirs` names inside `root`, following symbolic links as
/// the job will see them (an absolute target from the root); `None` when
/// a link leads out of the root or too many links are followed.
fn resolve(root: &Path, dirs: &[String]) -> Option<PathBuf> {
    let mut done: Vec<String> = vec![];
    let mut todo: Vec<String> = dirs.iter().rev().cloned().collect();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop()?;
                continue;
            }
            _ => {}
        }
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&part);
        match fs::read_link(&here) {
            Ok(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                if target.is_absolute() {
                    done.clear();
                }
                let more: Vec<String> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(p) => p.to_str().map(str::to_owned),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                todo.extend(more.into_iter().rev());
            }
            Err(_) => done.push(part),
        }
    }
    Some(root.join(done.iter().collect::<PathBuf>()))
}

/// Whether a symbolic link in `dir` pointing at `link` climbs above
/// `root` with `..` (an absolute target is the image's own root).
fn climbs_out(root: &Path, dir: &Path, link: &Path) -> bool {
    if link.is_absolute() {
        return false;
    }
    let mut depth = dir.strip_prefix(root).map_or(0, |d| d.components().count()) as i64;
    for c in link.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

// ------------------------------------------------------- root filesystems

/// Copies a root filesystem directory: directories, files with their
/// permissions, symbolic links as links (never followed).
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImportError> {
    for child in fs::read_dir(from).map_err(io_at(from))? {
        let child = child.map_err(io_at(from))?;
        let source = child.path();
        let target = to.join(child.file_name());
        let meta = source.symlink_metadata().map_err(io_at(&source))?;
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&source).map_err(io_at(&source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
        } else if meta.is_dir() {
            fs::create_dir(&target).map_err(io_at(&target))?;
            copy_tree(&source, &target)?;
            fs::set_permissions(&target, meta.permissions()).map_err(io_at(&target))?;
        } else if meta.is_file() {
            fs::copy(&source, &target).map_err(io_at(&target))?;
        }
    }
    Ok(())
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}
