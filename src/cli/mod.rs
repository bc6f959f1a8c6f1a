//! The command line: argument definitions and the thin glue from them to the library.

pub mod build;
pub mod client;
pub mod discover;
pub mod inventory;
pub mod serve;
pub mod state;
pub mod tls;

use clap::{Parser, Subcommand};

/// Boot media and a boot decision service for servers on networks without DHCP or PXE.
#[derive(Debug, Parser)]
#[command(
    name = "bootforge",
    version,
    about,
    long_about = "bootforge makes, for every server in a CSV inventory, a small boot medium (ISO, USB \
image or EFI image) that runs iPXE with that server's static network settings and asks a boot \
service what to do; and it runs that service, which answers \"install\" for hosts flagged for \
reimage and \"boot the local disk\" for everything else.",
    after_help = "Typical use:\n  bootforge check nodes.csv\n  bootforge build nodes.csv --server http://10.20.0.5:8080 --out media/\n  bootforge serve --inventory nodes.csv --profiles profiles/ --state-dir /var/lib/bootforge\n  bootforge tls check --cert chain.pem --ca ca.pem --server https://10.20.0.5:8443\n  curl -X PUT -H \"Authorization: Bearer $TOKEN\" http://10.20.0.5:8080/hosts/node01/reimage\n\nRun `bootforge COMMAND --help` for each command's options and examples."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Check(build::CheckArgs),
    Script(build::ScriptArgs),
    Build(build::BuildArgs),
    Inspect(build::InspectArgs),
    Serve(Box<serve::ServeArgs>),
    Reimage(serve::ReimageArgs),
    MediaUrl(serve::MediaUrlArgs),
    Attach(serve::AttachArgs),
    Detach(serve::DetachArgs),
    Power(serve::PowerArgs),
    Discover(discover::DiscoverArgs),
    State(state::StateArgs),
    Inventory(inventory::InventoryArgs),
    Audit(state::AuditArgs),
    Tls(tls::TlsArgs),
}

/// Runs one command. `Ok(false)` means the command ran but reports failure (exit status 1)
/// after printing its own explanation.
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Check(args) => build::check(args),
        Command::Script(args) => build::script(args).map(|()| true),
        Command::Build(args) => build::build(args).map(|()| true),
        Command::Inspect(args) => build::inspect(args).map(|()| true),
        Command::Serve(args) => serve::serve(*args).map(|()| true),
        Command::Reimage(args) => serve::reimage(args).map(|()| true),
        Command::MediaUrl(args) => serve::media_url(args).map(|()| true),
        Command::Attach(args) => serve::attach(args),
        Command::Detach(args) => serve::detach(args),
        Command::Power(args) => serve::power(args),
        Command::Discover(args) => discover::discover(args),
        Command::State(args) => state::state(args).map(|()| true),
        Command::Inventory(args) => inventory::inventory(args).map(|()| true),
        Command::Audit(args) => state::audit(args).map(|()| true),
        Command::Tls(args) => tls::tls(args),
    }
}
