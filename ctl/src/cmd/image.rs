//! `edupoolctl image ...`: the images in the nodes' stores.

use std::io;

use clap::Subcommand;
use edupoolctl::commands::Ctl;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Which nodes have which image in their store, and which nodes run
    /// jobs without an image (host jobs)
    #[command(after_help = "An image gets into a node's store with \
        `edupool-agent image import` on that node (docs/agent.md, \"Images\").")]
    List,
}

impl ImageCommand {
    /// Whether running it twice does no harm: it only reads.
    pub fn is_repeatable(&self) -> bool {
        true
    }

    pub async fn run(&self, ctl: &mut Ctl<io::Stdout>) -> anyhow::Result<()> {
        match self {
            ImageCommand::List => {
                ctl.list_images().await?;
            }
        }
        Ok(())
    }
}
