//! The image store on disk: an image named `NAME` is the unpacked root
//! filesystem `DIR/NAME/rootfs/`. Names are 1 to 128 letters, digits,
//! `.`, `_`, `-` and `:`, not starting with `.`, so a name is always one
//! path component and never a hidden entry of the store.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The longest image name accepted.
pub const MAX_IMAGE_NAME_LEN: usize = 128;

/// The folder inside an image's directory that holds its root filesystem.
pub const ROOTFS_DIR: &str = "rootfs";

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A name that cannot be an image's.
    #[error("invalid image name {name:?}: expected 1 to {max} letters, digits, '.', '_', '-' or ':', not starting with '.'", max = MAX_IMAGE_NAME_LEN)]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// No such image on this node.
    #[error("image {name:?} is not in this node's image store {} (no {}/{name}/{ROOTFS_DIR}/ directory)", store.display(), store.display())]
    NotFound {
        /// The image's name.
        name: String,
        /// The store's directory.
        store: PathBuf,
    },
    /// The store cannot be read.
    #[error("cannot read the image store {}", store.display())]
    Read {
        /// The store's directory.
        store: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Checks that `name` is a valid image name.
pub fn validate_image_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IMAGE_NAME_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// A directory of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// The store in `dir` (which need not exist yet: an empty store).
    pub fn new(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory an image named `name` lives in, whether or not it is
    /// there yet.
    pub fn image_dir(&self, name: &str) -> Result<PathBuf, ImageError> {
        validate_image_name(name)?;
        Ok(self.dir.join(name))
    }

    /// The root filesystem of image `name`, which must be a directory.
    pub fn rootfs(&self, name: &str) -> Result<PathBuf, ImageError> {
        let rootfs = self.image_dir(name)?.join(ROOTFS_DIR);
        if rootfs.is_dir() {
            Ok(rootfs)
        } else {
            Err(ImageError::NotFound {
                name: name.to_owned(),
                store: self.dir.clone(),
            })
        }
    }

    /// The names of the images present, sorted; entries that are not a
    /// valid name or have no `rootfs/` directory are left out. A store
    /// directory that does not exist holds no images.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(ImageError::Read {
                    store: self.dir.clone(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| validate_image_name(name).is_ok())
            .filter(|name| self.dir.join(name).join(ROOTFS_DIR).is_dir())
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_visible_path_component() {
        for good in ["busybox", "pytorch:2.3-cuda12", "a.b_c-d", &"x".repeat(128)] {
            validate_image_name(good).unwrap();
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "ü", &"x".repeat(129)] {
            let err = validate_image_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid image name"), "{err}");
        }
    }

    #[test]
    fn only_images_with_a_rootfs_are_listed_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        assert_eq!(store.list().unwrap(), Vec::<String>::new());
        fs::create_dir_all(dir.path().join("busybox/rootfs/bin")).unwrap();
        fs::create_dir_all(dir.path().join("torch:2.3/rootfs")).unwrap();
        fs::create_dir_all(dir.path().join("half-imported")).unwrap();
        fs::create_dir_all(dir.path().join(".partial/rootfs")).unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(store.list().unwrap(), vec!["busybox", "torch:2.3"]);
        assert_eq!(
            store.rootfs("busybox").unwrap(),
            dir.path().join("busybox/rootfs")
        );
        let missing = store.rootfs("half-imported").unwrap_err().to_string();
        assert!(
            missing.contains("\"half-imported\" is not in this node's image store"),
            "{missing}"
        );
        assert!(matches!(
            store.rootfs("../etc"),
            Err(ImageError::InvalidName { .. })
        ));
        // A store that does not exist yet is empty, not an error.
        assert!(ImageStore::new(dir.path().join("none"))
            .list()
            .unwrap()
            .is_empty());
    }
}
