//! The node's image store: unpacked root filesystems that jobs with an
//! image run in, found without any network.
//!
//! - [`store`]: names, listing and lookup (`DIR/NAME/rootfs/`).
pub mod store;

pub use store::{validate_image_name, ImageError, ImageStore, MAX_IMAGE_NAME_LEN};
