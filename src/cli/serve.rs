//! `serve` and `reimage`: the boot service's commands.
//! PLACEHOLDER (lead): replaced by the serve engineer's real definitions.

use clap::Args;

/// Run the boot decision service.
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Flag hosts for reimage through the service's API.
#[derive(Debug, Args)]
pub struct ReimageArgs {}

pub fn serve(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn reimage(_args: ReimageArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
