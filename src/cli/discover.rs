//! `bootforge discover`: asks the boot service to read the BMCs of inventory rows and propose
//! each node's boot NIC (MAC), UUID and serial number; prints `host: old -> new` per host, and
//! with `--apply` has the service write them as one inventory edit. A thin client of
//! `POST /discover` (see docs/API.md): the BMC passwords never leave the service.

use crate::cli::client::{agent, read_token, unreachable};
use std::path::PathBuf;
use std::time::Duration;

const DISCOVER_HELP: &str = "\
Examples:
  # What would change, for every row with a bmc (changes nothing):
  bootforge discover --all --server http://bootsvc:8080 --token-file ~/.bootforge-token

  # Write it (role admin): one inventory edit, audited with your name:
  bootforge discover --all --apply --server http://bootsvc:8080 --token-file admin-token

  # Two hosts, replacing MACs an operator typed that the BMC contradicts:
  bootforge discover node01 node02 --apply --overwrite --server http://bootsvc:8080 --token-file t

For each host the service reads its BMC's Redfish EthernetInterfaces and proposes the boot NIC:
the only interface with an address in the row's subnet, else the only one that is up (link up,
or enabled where the BMC reports no link). Two candidates, or none up, are reported as such and
change nothing. A MAC (or uuid, serial) the row already has is kept unless --overwrite. The
system's UUID and serial number are recorded where the inventory has `uuid` and `serial`
columns; a node whose boot then reports another UUID is refused like a wrong MAC.

Output, one line per host:  HOST: OLD -> NEW (why), with notes indented below it.
The exit status is 1 if any host's BMC could not be read. See docs/BMC.md.";

/// Propose each node's boot NIC MAC, UUID and serial from its BMC (Redfish), through the
/// service; --apply writes them to the inventory.
#[derive(clap::Args, Debug)]
#[command(after_help = DISCOVER_HELP)]
pub struct DiscoverArgs {
    /// Host names (or --all).
    #[arg(value_name = "HOSTNAME", required_unless_present = "all", conflicts_with = "all")]
    pub hosts: Vec<String>,
    /// Every inventory row with a `bmc` column value.
    #[arg(long)]
    pub all: bool,
    /// Write the proposal to the inventory, as one edit (needs role admin). Without it,
    /// nothing changes.
    #[arg(long)]
    pub apply: bool,
    /// Replace a MAC, uuid or serial the row has when the BMC reports another.
    #[arg(long)]
    pub overwrite: bool,
    /// Base URL of the boot service.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// File holding the API token (first line; role reimage, admin for --apply).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// A CA certificate file (PEM) to trust for an https:// --server with a private CA, besides
    /// the public roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for the service's answer (it reads the BMCs, a few at a time, each
    /// within its --bmc-deadline).
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub timeout: u64,
    /// Print the service's JSON answer instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs `bootforge discover`; `Ok(false)` when a host's BMC could not be read.
pub fn discover(args: DiscoverArgs) -> anyhow::Result<bool> {
    let token = read_token(&args.token_file)?;
    let body = serde_json::json!({
        "hosts": args.hosts,
        "all": args.all,
        "apply": args.apply,
        "overwrite": args.overwrite,
    });
    let agent = agent(&args.server, args.ca_file.as_deref(), Duration::from_secs(args.timeout))?;
    let base = args.server.trim_end_matches('/');
    let answer = match agent
        .post(&format!("{base}/discover"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(resp) => json_of(resp),
        Err(ureq::Error::Status(code, resp)) => {
            let v = json_of(resp);
            if code == 422 {
                // The edit would make the inventory invalid: the service lists why.
                for e in v["errors"].as_array().into_iter().flatten() {
                    eprintln!(
                        "line {}, column {}: {}",
                        e["line"],
                        e["column"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("?")
                    );
                }
            }
            anyhow::bail!("discover: HTTP {code}: {}", v["error"].as_str().unwrap_or("no details"))
        }
        Err(e) => anyhow::bail!("{}", unreachable(base, &e)),
    };
    if args.json {
        println!("{answer}");
    }
    let hosts = answer["hosts"].as_array().cloned().unwrap_or_default();
    let mut failed = 0;
    for h in &hosts {
        if h["error"].is_string() {
            failed += 1;
        }
        if args.json {
            continue;
        }
        for line in lines(h) {
            println!("{line}");
        }
    }
    if !args.json {
        let changed = hosts.iter().filter(|h| h["changes"] == true).count();
        if answer["applied"] == true {
            println!(
                "applied: {changed} host(s) changed; inventory version {}",
                answer["version"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or(answer["version"].to_string())
            );
        } else if hosts.is_empty() {
            println!("no inventory row has a `bmc` value: nothing to discover");
        } else if changed > 0 {
            println!("{changed} host(s) would change; nothing was written (run with --apply)");
        } else {
            println!("nothing to change");
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} hosts could not be read", hosts.len());
    }
    Ok(failed == 0)
}

/// The lines of one host: `host: old -> new (summary)`, then its notes.
fn lines(h: &serde_json::Value) -> Vec<String> {
    let host = h["host"].as_str().unwrap_or("?");
    let mac = |v: &serde_json::Value| v.as_str().unwrap_or("(none)").to_string();
    let summary = h["summary"].as_str().unwrap_or("");
    let mut out = if h["error"].is_string() {
        vec![format!("{host}: {summary}")]
    } else {
        vec![format!("{host}: {} -> {} ({summary})", mac(&h["old_mac"]), mac(&h["new_mac"]))]
    };
    for note in h["notes"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
        out.push(format!("  {note}"));
    }
    out
}

fn json_of(resp: ureq::Response) -> serde_json::Value {
    resp.into_string().ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}
