//! `bootforge tls check`: whether a certificate suits the iPXE of the boot media, before it is
//! deployed. The judging is [`crate::tls::check`]; this file reads the files and prints.

use crate::inventory::ServerUrl;
use crate::tls::check::{Input, Problem};
use std::path::PathBuf;

const TLS_HELP: &str = "\
Examples:
  # The certificate the service will serve (leaf first, then intermediates), for nodes that
  # boot from https://10.20.0.5:8443, checked against the CA their firmware trusts.
  bootforge tls check --cert /etc/bootforge/tls/chain.pem --ca /etc/bootforge/tls/ca.pem \\
                      --server https://10.20.0.5:8443

  # The same, as JSON for a pipeline.
  bootforge tls check --cert chain.pem --server https://boot.lab:8443 --json

Each finding is one line: `problem: …` (iPXE will not boot over HTTPS with it; the line names
the fix), `warning: …` (it works for iPXE, with a catch), `ok: …` (what was found fine).
Exit status: 0 no problem (warnings allowed), 1 problems, 2 a file is unreadable.
`bootforge serve --tls-cert` runs the same check at start-up and logs the problems as warnings.
See docs/TLS.md for the certificate profile iPXE needs.";

/// Certificates for the HTTPS boot service.
#[derive(clap::Args, Debug)]
pub struct TlsArgs {
    #[command(subcommand)]
    pub action: TlsAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum TlsAction {
    /// Check a certificate chain for the iPXE of the boot media: RSA keys up to the root, RSA
    /// signatures, the server URL's host in subjectAltName, no OCSP responder, validity dates,
    /// chain order.
    #[command(after_help = TLS_HELP)]
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The certificate chain the service serves (PEM): the leaf first, then intermediates.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The CA certificate(s) (PEM) the nodes' firmware trusts; the chain must end at or under one.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The server URL the nodes boot from, as given to `bootforge build --server`.
    #[arg(long, value_name = "URL")]
    pub server: ServerUrl,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// An input file could not be read or parsed: exit status 2 (see `main.rs`).
#[derive(Debug)]
pub struct UnreadableInput(pub String);

impl std::fmt::Display for UnreadableInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnreadableInput {}

pub fn tls(args: TlsArgs) -> anyhow::Result<bool> {
    match args.action {
        TlsAction::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| UnreadableInput(format!("cannot read {}: {e}", path.display())))
    };
    let chain = read(&args.cert)?;
    let ca = args.ca.as_ref().map(read).transpose()?;
    let now = (crate::serve::util::now_ms() / 1000) as i64;
    let report = crate::tls::check::check(&chain, ca.as_deref(), &args.server, now);
    if let Some(Problem::Unreadable { input, why }) =
        report.problems.iter().find(|p| matches!(p, Problem::Unreadable { .. }))
    {
        let file = match input {
            Input::Chain => &args.cert,
            Input::Ca => args.ca.as_ref().unwrap_or(&args.cert),
        };
        return Err(UnreadableInput(format!("{} ({input}) {why}", file.display())).into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        for line in report.lines() {
            println!("{line}");
        }
    }
    Ok(report.problems.is_empty())
}
