//! The node's image store: unpacked root filesystems that jobs with an
//! image run in, found without any network.
//!
//! - [`store`]: names, listing and lookup (`DIR/NAME/rootfs/`).
//! - [`import`]: `edupool-agent image import`, from an OCI image layout or
//!   a root filesystem (directory or tarball).
pub mod import;
pub mod store;

#[cfg(test)]
mod import_tests;

pub use store::{validate_image_name, ImageError, ImageStore, MAX_IMAGE_NAME_LEN};
