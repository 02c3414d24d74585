//! `edupoolctl node ...`: list nodes and take them in and out of service
//! (admins).

use std::io;

use clap::Subcommand;
use edupool_proto::v1::NodeLabels;
use edupoolctl::commands::{Ctl, NodeAction};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes, their GPUs and their state
    List,
    /// One node: its state, labels, GPUs, images and whether it runs jobs
    /// without an image
    Show {
        /// The node's name
        name: String,
    },
    /// Place no new jobs on a node; running jobs go on
    Cordon {
        /// The node's name
        name: String,
    },
    /// Let a cordoned or drained node take new jobs again
    Uncordon {
        /// The node's name
        name: String,
    },
    /// Cordon a node and let its running jobs finish; it is empty once RUNNING is 0
    Drain {
        /// The node's name
        name: String,
    },
    /// Set a node's labels (all of them: a label left out is cleared)
    #[command(after_help = "Example:\n  \
        edupoolctl node label gpu-07 --owner zju --site hangzhou --data-level 2")]
    Label {
        /// The node's name
        name: String,
        /// The member that contributed it; its healthy GPUs count towards that member's guarantee
        #[arg(long, value_name = "TENANT")]
        owner: Option<String>,
        /// The node's site [default: default]
        #[arg(long)]
        site: Option<String>,
        /// The highest data classification level (0-3) it is certified for
        #[arg(long, value_name = "LEVEL", default_value_t = 0)]
        data_level: u32,
        /// Override the GPU class derived from the model (A100-80GB is class A100)
        #[arg(long, value_name = "CLASS")]
        gpu_class: Option<String>,
    },
    /// Put a GPU marked unhealthy back into placement, once its agent
    /// reports it healthy again after a reset
    ClearGpu {
        /// The node's name
        name: String,
        /// The GPU's UUID, as `node list` shows it
        gpu_uuid: String,
    },
}

impl NodeCommand {
    /// Whether running it twice does no harm: only the reads.
    pub fn is_repeatable(&self) -> bool {
        matches!(self, NodeCommand::List | NodeCommand::Show { .. })
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            NodeCommand::List => {
                ctl.list_nodes().await?;
            }
            NodeCommand::Show { name } => {
                ctl.show_node(name).await?;
            }
            NodeCommand::Cordon { name } => {
                ctl.node_action(name, NodeAction::Cordon).await?;
            }
            NodeCommand::Uncordon { name } => {
                ctl.node_action(name, NodeAction::Uncordon).await?;
            }
            NodeCommand::Drain { name } => {
                ctl.node_action(name, NodeAction::Drain).await?;
            }
            NodeCommand::Label {
                name,
                owner,
                site,
                data_level,
                gpu_class,
            } => {
                let labels = NodeLabels {
                    owner: owner.clone().unwrap_or_default(),
                    site: site.clone().unwrap_or_default(),
                    data_level: *data_level,
                    gpu_class: gpu_class.clone().unwrap_or_default(),
                };
                ctl.label_node(name, labels).await?;
            }
            NodeCommand::ClearGpu { name, gpu_uuid } => {
                ctl.clear_gpu(name, gpu_uuid).await?;
            }
        }
        Ok(())
    }
}
