//! `edupoolctl image list` (which nodes have which image in their store)
//! and `node show` (one node, its images and host-job permission), both
//! read from the node list.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use edupool_proto::v1::Node;
use edupool_table::Table;
use serde::Serialize;
use tonic::Status;

use crate::commands::{CommandError, Ctl};
use crate::output::{self, NodeView, OutputFormat};

/// An image and the nodes that report it, for scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageView {
    pub image: String,
    pub nodes: Vec<String>,
}

/// `image list` as JSON: every image, and the nodes that run jobs without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagesView {
    pub images: Vec<ImageView>,
    pub host_job_nodes: Vec<String>,
}

/// Every image any node reports, by name, with its nodes in name order.
pub fn images_of(nodes: &[Node]) -> ImagesView {
    let mut by_image: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for node in nodes {
        for image in &node.images {
            by_image.entry(image).or_default().push(node.name.clone());
        }
    }
    let images = by_image
        .into_iter()
        .map(|(image, mut nodes)| {
            nodes.sort();
            ImageView {
                image: image.to_owned(),
                nodes,
            }
        })
        .collect();
    let mut host_job_nodes: Vec<String> = nodes
        .iter()
        .filter(|n| n.allows_host_jobs)
        .map(|n| n.name.clone())
        .collect();
    host_job_nodes.sort();
    ImagesView {
        images,
        host_job_nodes,
    }
}

/// `image list`: one row per image, then the nodes that run host jobs.
pub fn image_table(view: &ImagesView) -> String {
    let mut out = if view.images.is_empty() {
        "no node reports an image\n".to_owned()
    } else {
        let mut table = Table::new(["IMAGE", "NODES", "ON"]);
        for i in &view.images {
            table.row([
                i.image.clone(),
                i.nodes.len().to_string(),
                i.nodes.join(", "),
            ]);
        }
        table.render()
    };
    let host = &view.host_job_nodes;
    out.push_str(&match host.len() {
        0 => "\nno node runs jobs without an image (host jobs)\n".to_owned(),
        n => format!(
            "\njobs without an image (host jobs) run on {n} {}: {}\n",
            if n == 1 { "node" } else { "nodes" },
            host.join(", ")
        ),
    });
    out
}

impl<W: Write> Ctl<W> {
    /// `image list`.
    pub async fn list_images(&mut self) -> Result<ImagesView, CommandError> {
        let nodes = self.fetch_nodes().await?;
        let view = images_of(&nodes);
        match self.format {
            OutputFormat::Table => self.out.write_all(image_table(&view).as_bytes())?,
            OutputFormat::Json => writeln!(self.out, "{}", output::to_json(&view)?)?,
        }
        self.out.flush()?;
        Ok(view)
    }

    /// `node show NAME`.
    pub async fn show_node(&mut self, name: &str) -> Result<Node, CommandError> {
        let nodes = self.fetch_nodes().await?;
        let Some(node) = nodes.into_iter().find(|n| n.name == name) else {
            return Err(CommandError::Rpc(Status::not_found(format!(
                "no node named {name}; `edupoolctl node list` shows the nodes"
            ))));
        };
        match self.format {
            OutputFormat::Table => self
                .out
                .write_all(output::node_detail(&node, SystemTime::now()).as_bytes())?,
            OutputFormat::Json => {
                writeln!(self.out, "{}", output::to_json(&NodeView::from(&node))?)?
            }
        }
        self.out.flush()?;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, images: &[&str], host: bool) -> Node {
        Node {
            name: name.into(),
            images: images.iter().map(|i| i.to_string()).collect(),
            allows_host_jobs: host,
            ..Node::default()
        }
    }

    #[test]
    fn image_list_names_the_nodes_of_each_image_and_the_host_job_nodes() {
        let nodes = [
            node("gpu-02", &["pytorch-2.3", "busybox"], false),
            node("gpu-01", &["pytorch-2.3"], true),
            node("gpu-03", &[], true),
        ];
        let view = images_of(&nodes);
        assert_eq!(
            image_table(&view),
            "IMAGE        NODES  ON\n\
             busybox      1      gpu-02\n\
             pytorch-2.3  2      gpu-01, gpu-02\n\
             \n\
             jobs without an image (host jobs) run on 2 nodes: gpu-01, gpu-03\n"
        );
        let json = output::to_json(&view).unwrap();
        assert!(json.contains(r#""host_job_nodes": ["#), "{json}");
        assert_eq!(view.images[1].nodes, ["gpu-01", "gpu-02"]);
    }

    #[test]
    fn image_list_of_a_pool_without_images_says_so() {
        let view = images_of(&[node("gpu-01", &[], false)]);
        assert_eq!(
            image_table(&view),
            "no node reports an image\n\nno node runs jobs without an image (host jobs)\n"
        );
    }

    #[test]
    fn node_show_lists_images_and_host_job_permission() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let shown = output::node_detail(&node("gpu-02", &["busybox", "pytorch-2.3"], false), now);
        assert!(shown.starts_with("node:        gpu-02\n"), "{shown}");
        assert!(
            shown.contains("\nimages:      busybox, pytorch-2.3\n"),
            "{shown}"
        );
        assert!(
            shown.contains("\nhost jobs:   not allowed (only jobs with an image run here)\n"),
            "{shown}"
        );
        let host = output::node_detail(&node("gpu-03", &[], true), now);
        assert!(host.contains("\nimages:      -\n"), "{host}");
        assert!(host.contains("\nhost jobs:   allowed"), "{host}");
        let json = output::to_json(&NodeView::from(&node("gpu-02", &["busybox"], false))).unwrap();
        assert!(
            json.contains(r#""images": ["#) && json.contains(r#""allows_host_jobs": false"#),
            "{json}"
        );
    }
}
