//! `serve` and `reimage`: the boot service's commands. Parsing only; the work is in
//! [`crate::serve`].

use super::client;
use crate::inventory::ServerUrl;
use crate::serve::{Config, Server};
use std::path::PathBuf;

const SERVE_HELP: &str = "\
Examples:
  # Answer boot requests on port 8080, with node tokens and an API tokens file:
  bootforge serve --inventory nodes.csv --profiles profiles/ --state-dir /var/lib/bootforge \\
      --public-url http://10.20.0.5:8080 \\
      --secret-file /etc/bootforge/secret --tokens-file /etc/bootforge/tokens \\
      --assets /srv/bootforge/assets

  # A tokens file line is NAME ROLE SHA256-OF-TOKEN (roles: read, reimage, admin):
  TOKEN=$(openssl rand -hex 24); echo \"ops reimage $(printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1)\" >> tokens

  # Then flag a node; its next boot installs, the installer's callback clears the flag:
  curl -X PUT -H \"Authorization: Bearer $TOKEN\" http://bootsvc:8080/hosts/node01/reimage

  # Over HTTPS with the operator's certificate, and plain HTTP beside it for BIOS nodes (each
  # node is sent URLs on the listener it came in on):
  bootforge serve ... --listen 10.20.0.5:8080 --listen-tls 10.20.0.5:8443 \\
      --tls-cert /etc/bootforge/tls/chain.pem --tls-key /etc/bootforge/tls/key.pem
  bootforge reimage node01 --server https://10.20.0.5:8443 --ca-file ca.pem --token-file t

  # Replicas on PostgreSQL, the inventory in the database (edited from any replica's console):
  export BOOTFORGE_DATABASE=postgres://bootforge@db.example/bootforge
  bootforge inventory import nodes.csv
  bootforge serve --profiles profiles/ --state-dir /var/lib/bootforge --public-url ...

Where the inventory lives: with --inventory FILE, the file is the truth (edit it, or from the
console on a single service; replicas each keep their copy by configuration management, and
the console does not edit it). Without --inventory, the database's inventory is the truth:
console edits are transactions every replica sees within a second, and an empty database
starts the service with no hosts. Either way every edit names the version it was made against,
so none is silently overwritten. See docs/STATE.md, section The inventory.

Unflagged, unknown or mismatching nodes always get a local-boot script. The inventory,
profiles and tokens file are reloaded when they change (or on SIGHUP); a failed reload of the
inventory or profiles keeps the old ones. Removing a line from the tokens file revokes that
token at the next reload; a tokens file that cannot be loaded refuses every token until fixed.
Flags, installs and the audit log live in the database (--database; default: SQLite in
--state-dir); replicas share one PostgreSQL or MariaDB database (docs/REPLICAS.md).
Without --tokens-file the API (/hosts, /events, reimage) refuses every request with 401.
URLs written into install chains and configs come from the row's `server`, else --public-url,
else the address of the listener the request came in on (http:// for --listen, https:// for
--listen-tls) if it is a specific one; never from the request's Host header. With neither
(listening on 0.0.0.0), every row needs a `server` column.
TLS: --listen-tls serves HTTPS itself (rustls; TLS 1.2 for iPXE and 1.3); with it alone there
is no plain listener, give --listen too for nodes that boot over HTTP. The certificate and key
are reloaded when they change (renewals need no restart); a new pair that does not load keeps
the old one serving and shows the error in /status. Over TLS the console's cookie is Secure and
every answer carries Strict-Transport-Security. See docs/TLS.md.
The operator's console is at /ui/ (API tokens, and directory accounts with --ldap-config).
Behind a reverse proxy, name it with --trusted-proxy (e.g. --trusted-proxy 10.0.0.5) so that
failed logins are counted per operator address, not for everyone at once.
See docs/API.md, docs/CONSOLE.md, docs/PROFILES.md and docs/STATE.md.";

/// Run the boot decision service: answer every boot with "install" or "boot the local disk".
#[derive(clap::Args, Debug)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    /// The inventory CSV (the same file the media were built from): the file is the
    /// inventory, watched and reloaded when it changes. Without it, the database's inventory is
    /// (filled by `bootforge inventory import` or the console's upload), shared by every
    /// replica and edited from any of them.
    #[arg(long, value_name = "NODES.csv")]
    pub inventory: Option<PathBuf>,
    /// Folder of install profiles: one sub-folder per profile with boot.ipxe, config/, profile.toml.
    #[arg(long, value_name = "DIR")]
    pub profiles: PathBuf,
    /// The service's own folder: its SQLite database (state.db) unless --database names
    /// another. An old state folder (hosts/*.json, audit.jsonl) found here is imported once.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Where flags, installs, the audit log and last boots are kept: `sqlite:///PATH` (default:
    /// STATE_DIR/state.db), `postgres://USER:PASSWORD@HOST/DB` (replicas; add
    /// `?sslmode=verify-full&sslrootcert=CA.pem` for TLS), or `mysql://…` (MariaDB). Prefer
    /// the BOOTFORGE_DATABASE environment variable to keep the password off the command line.
    #[arg(long, value_name = "URL", env = "BOOTFORGE_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Days audit records of boot answers, config and media fetches and refusals are kept
    /// (0: for ever). They are most of the log: a record per node boot.
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    pub keep_boot_records: u64,
    /// Days audit records of changes (flags, installs, logins, inventory edits) are kept
    /// (0: for ever, the default).
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    pub keep_change_records: u64,
    /// Address and port of the plain HTTP listener [default: 0.0.0.0:8080, or none when
    /// --listen-tls is given: give both for BIOS nodes, whose iPXE cannot trust a private CA].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Address and port of the TLS listener (HTTPS, TLS 1.2 and 1.3), with --tls-cert and
    /// --tls-key. It shares the connection caps, limits and timeouts of --listen; the TLS
    /// handshake must finish within the header timeout.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    pub listen_tls: Option<String>,
    /// The certificate chain for --listen-tls (PEM, the service's certificate first, then any
    /// intermediates); RSA or ECDSA (iPXE needs RSA). Reloaded when it changes.
    #[arg(long, value_name = "FILE", requires = "listen_tls")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC; not encrypted).
    /// Reloaded when it changes; a new pair that does not load keeps the old one serving.
    #[arg(long, value_name = "FILE", requires = "listen_tls")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that issued --tls-cert, for clients that must be told whom
    /// to trust (BMCs fetching media over https) and for the certificate checks.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Folder served at /assets/ (kernels, initrds, ISOs), with Range support.
    #[arg(long, value_name = "DIR")]
    pub assets: Option<PathBuf>,
    /// The key node tokens are derived from (the one given to `bootforge build`). With it, boot
    /// requests, config files and callbacks need the node's token.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// API tokens: lines `NAME ROLE SHA256-HEX-OF-TOKEN`. Without it the API refuses everything.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Base URL written into rendered templates (config_url, done_url, asset_url) for nodes
    /// whose row has no `server` column: the --server the media were built with. Default: the
    /// address of the listener each request came in on (https:// for --listen-tls, http:// for
    /// --listen), if it is a specific one.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<ServerUrl>,
    /// Threads for work that may block: reading and writing the state directory (fsync), the
    /// audit log, template renders and file reads. Connections run on one async thread per core
    /// and never wait on the disk themselves.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub workers: usize,
    /// Open connections at most; beyond it new ones wait in the kernel's backlog. Lowered to fit
    /// the open-files limit (raised to its hard limit at start).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Open connections at most from one peer address (an IPv6 /64); beyond it they are closed
    /// at once. Raise it when many nodes reach the service through one proxy or NAT address.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_peer: usize,
    /// iPXE loaders for the images served at /media/, as `build --firmware-dir` takes them
    /// (default: the embedded Debian build). Images served at /media/ are dated
    /// SOURCE_DATE_EPOCH when it is set, else 1700000000 (a fixed date, so restarts and other
    /// instances serve the same bytes).
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Base of the /media/ URLs handed to BMCs (`media-url`, `attach`): this service's address
    /// as the BMCs' management network reaches it. Default: the node's own base URL (its row's
    /// `server`, else --public-url).
    #[arg(long, value_name = "URL")]
    pub media_base_url: Option<ServerUrl>,
    /// BMC credentials for `attach`/`detach` (PUT/DELETE /hosts/{h}/media): lines
    /// `BMC USER PASSWORD-SOURCE [insecure-tls] [allow-http]`; BMC is a host, a network
    /// (10.1.0.0/24), a domain (*.bmc.lab) or `*`, and PASSWORD-SOURCE a file path or env:NAME;
    /// http:// BMC URLs need `allow-http`. Mode 600, like every password file. See docs/BMC.md.
    #[arg(long, value_name = "FILE")]
    pub bmc_credentials: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for BMC TLS, for BMCs with a private CA.
    #[arg(long, value_name = "FILE")]
    pub bmc_ca: Option<PathBuf>,
    /// The longest one BMC operation (attach, detach, status) may take, in seconds, waiting
    /// for a free slot included; after it the caller gets HTTP 504 naming the step reached.
    /// At most 600 (`bootforge attach` waits 900 s for an answer).
    #[arg(long, value_name = "SECS", default_value_t = crate::serve::app::bmc::DEFAULT_DEADLINE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub bmc_deadline: u64,
    /// Seconds between background reads of every BMC's hardware state (power, health, our
    /// medium, boot override) for /hosts and the console; 0: no background reads (only
    /// GET /hosts/{h}/hardware?refresh=1); otherwise 5 to 86400.
    #[arg(long, value_name = "SECS", default_value_t = crate::serve::app::config::DEFAULT_BMC_REFRESH.as_secs(),
          value_parser = parse_bmc_refresh)]
    pub bmc_refresh: u64,
    /// Hardware state reads of live BMCs at once (1 to 32); BMCs whose last read timed out or
    /// found nobody are read two at a time on a lane of their own, less and less often.
    #[arg(long, value_name = "N", default_value_t = crate::serve::app::config::DEFAULT_BMC_REFRESH_JOBS,
          value_parser = parse_bmc_refresh_jobs)]
    pub bmc_refresh_jobs: usize,
    /// The longest one BMC's hardware state read may take, in seconds; a BMC slower than this
    /// is shown with error `timeout` and stale state.
    #[arg(long, value_name = "SECS", default_value_t = crate::serve::app::config::DEFAULT_BMC_STATE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub bmc_state_timeout: u64,
    /// Directory logins for the console at /ui/ (TOML: LDAPS or StartTLS URL, bind DN template,
    /// group search, group → role map). See docs/CONSOLE.md.
    #[arg(long, value_name = "FILE")]
    pub ldap_config: Option<PathBuf>,
    /// Mark console session cookies Secure (automatic when --public-url is https://): for a TLS
    /// proxy in front of the service.
    #[arg(long)]
    pub console_secure_cookie: bool,
    /// Console sessions end after this many minutes without a request.
    #[arg(long, value_name = "MINUTES", default_value_t = 30)]
    pub session_idle_minutes: u64,
    /// Console sessions end this many hours after login, whatever happens.
    #[arg(long, value_name = "HOURS", default_value_t = 12)]
    pub session_max_hours: u64,
    /// A reverse proxy in front of the service (an address, or a network such as 10.0.0.0/24;
    /// repeat for several). Requests from it are attributed to the client its X-Forwarded-For
    /// names: the rightmost address there that is not itself a trusted proxy. Login throttling,
    /// the audit log's `peer` and the server log then see each operator, not the proxy. Without
    /// it X-Forwarded-For is ignored (anyone can send one). Hops left of the client's are never
    /// read; a request whose client hop is malformed is refused (400).
    #[arg(long = "trusted-proxy", value_name = "ADDR|CIDR", value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `--trusted-proxy`: an address (one host) or a network in CIDR notation.
fn parse_trusted_proxy(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    text.parse::<ipnet::IpNet>().map(|n| n.trunc()).map_err(|_| {
        format!("{text:?} is neither an IP address (10.0.0.5, 2001:db8::5) nor a network (10.0.0.0/24, 2001:db8::/64)")
    })
}

const MEDIA_URL_HELP: &str = "\
Examples:
  # A week-long URL of node01's ISO, for a BMC, a hypervisor or curl:
  bootforge media-url node01 --server http://bootsvc:8080 --token-file ~/.bootforge-token

  # Its USB image with both EFI loaders, valid for one hour:
  bootforge media-url node01 --format usb --arch x86_64,arm64 --ttl 3600 \\
      --server http://bootsvc:8080 --token-file t

  # Fetch it; resumable, since the service answers Range requests:
  curl -fC - -o node01.iso \"$(bootforge media-url node01 --server ... --token-file t)\"

The URL carries its own credential (an expiry and a signature over host, format and options),
because BMCs cannot send an Authorization header: treat it like a password until it expires.
The image is byte-identical to what `bootforge build` writes with the same options and
SOURCE_DATE_EPOCH. The token needs the reimage (or admin) role.";

/// Print a signed, expiring URL of a node's boot medium, served by the boot service.
#[derive(clap::Args, Debug)]
#[command(after_help = MEDIA_URL_HELP)]
pub struct MediaUrlArgs {
    /// The host whose medium to sign.
    #[arg(value_name = "HOSTNAME")]
    pub host: String,
    /// Base URL of the boot service: http://… or https://….
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The CA certificate (PEM) that issued the service's certificate, for an https:// --server
    /// with a private CA (trusted besides the public roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the API token (first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Image format: iso, usb or efi.
    #[arg(long, default_value = "iso")]
    pub format: String,
    /// EFI loaders in the image, comma-separated: x86_64, arm64.
    #[arg(long, value_name = "ARCHES", default_value = "x86_64")]
    pub arch: String,
    /// How the ISO is attached on BIOS machines: cd or usb (as `build --iso-medium`).
    #[arg(long, default_value = "cd")]
    pub medium: String,
    /// UEFI loader: ipxe or snponly (as `build --efi-loader`).
    #[arg(long, default_value = "ipxe")]
    pub efi_loader: String,
    /// Seconds the URL stays valid (at most a year).
    #[arg(long, value_name = "SECONDS", default_value_t = 7 * 24 * 3600)]
    pub ttl: u64,
    /// Print the whole answer as JSON (url, expires_at, size) instead of the URL alone.
    #[arg(long)]
    pub json: bool,
}

const REIMAGE_HELP: &str = "\
Examples:
  # Flag two nodes with the profile from their inventory row:
  bootforge reimage node01 node02 --server http://bootsvc:8080 --token-file ~/.bootforge-token

  # Flag with an explicit profile:
  bootforge reimage node03 --profile harvester-join --server http://bootsvc:8080 --token-file t

  # Cancel (the next boot is local again; a late installer callback is ignored):
  bootforge reimage --cancel node01 --server http://bootsvc:8080 --token-file t

The token needs the reimage (or admin) role in the server's --tokens-file. Each host is tried;
the command fails if any of them failed, and says why.";

/// Flag hosts for reimage, or cancel a flag, through the boot service's API.
#[derive(clap::Args, Debug)]
#[command(after_help = REIMAGE_HELP)]
pub struct ReimageArgs {
    /// Host names to flag (or, with --cancel, to un-flag).
    #[arg(required = true, value_name = "HOSTNAME")]
    pub hosts: Vec<String>,
    /// Base URL of the boot service: http://… or https://….
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The CA certificate (PEM) that issued the service's certificate, for an https:// --server
    /// with a private CA (trusted besides the public roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the API token (first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// Install profile; default: the node's `profile` column.
    #[arg(long, value_name = "NAME", conflicts_with = "cancel")]
    pub profile: Option<String>,
    /// Cancel the reimage instead of requesting it.
    #[arg(long)]
    pub cancel: bool,
}

/// `bootforge serve`: runs until SIGINT/SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::new(PathBuf::new(), args.profiles, args.state_dir);
    config.inventory = args.inventory;
    config.database = args.database;
    let days = |d: u64| (d > 0).then(|| std::time::Duration::from_secs(d.saturating_mul(86_400)));
    config.keep_boot_records = days(args.keep_boot_records);
    config.keep_change_records = days(args.keep_change_records);
    // Only --listen-tls: TLS only (nothing in clear unless asked for).
    config.listen = match (args.listen, &args.listen_tls) {
        (Some(addr), _) => addr,
        (None, Some(_)) => String::new(),
        (None, None) => "0.0.0.0:8080".into(),
    };
    config.listen_tls = args.listen_tls;
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    config.tls_ca = args.tls_ca;
    config.assets = args.assets;
    config.secret_file = args.secret_file;
    config.tokens_file = args.tokens_file;
    config.public_url = args.public_url;
    config.workers = args.workers;
    config.limits.max_connections = args.max_connections;
    config.limits.max_connections_per_peer = args.max_connections_per_peer;
    config.firmware_dir = args.firmware_dir;
    config.media_base_url = args.media_base_url;
    config.bmc_credentials = args.bmc_credentials;
    config.bmc_ca = args.bmc_ca;
    config.bmc_deadline = std::time::Duration::from_secs(args.bmc_deadline);
    config.bmc_refresh = std::time::Duration::from_secs(args.bmc_refresh);
    config.bmc_state_timeout = std::time::Duration::from_secs(args.bmc_state_timeout);
    config.bmc_refresh_jobs = args.bmc_refresh_jobs;
    config.ldap_config = args.ldap_config;
    config.secure_cookies = args.console_secure_cookie;
    config.trusted_proxies = args.trusted_proxies;
    config.sessions = crate::serve::auth::session::Lifetimes {
        idle_ms: args.session_idle_minutes.clamp(1, 24 * 60) * 60_000,
        absolute_ms: args.session_max_hours.clamp(1, 24 * 30) * 3_600_000,
    };
    config.media_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => Some(text.trim().parse().map_err(|_| {
            anyhow::anyhow!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970")
        })?),
        Err(_) => None,
    };
    Server::start(config)?.run_until_signalled()
}

/// `bootforge reimage`: one API request per host; prints one line per host.
pub fn reimage(args: ReimageArgs) -> anyhow::Result<()> {
    let token = client::read_token(&args.token_file)?;
    let action =
        if args.cancel { client::Action::Cancel } else { client::Action::Flag(args.profile) };
    for line in client::run(&args.server, args.ca_file.as_deref(), &token, &args.hosts, &action)? {
        println!("{line}");
    }
    Ok(())
}

/// `bootforge media-url`: one API request; prints the URL.
pub fn media_url(args: MediaUrlArgs) -> anyhow::Result<()> {
    let token = client::read_token(&args.token_file)?;
    let body = serde_json::json!({
        "format": args.format,
        "arch": args.arch,
        "medium": args.medium,
        "efi_loader": args.efi_loader,
        "ttl": args.ttl,
    });
    let answer =
        client::media_url(&args.server, args.ca_file.as_deref(), &token, &args.host, &body)?;
    if args.json {
        println!("{answer}");
    } else {
        println!("{}", answer["url"].as_str().unwrap_or_default());
    }
    Ok(())
}

const ATTACH_HELP: &str = "\
Examples:
  # Mount each node's ISO on its BMC's virtual CD and boot from it at every boot:
  bootforge attach --all --server http://bootsvc:8080 --token-file ~/.bootforge-token

  # Two nodes, boot from the CD once, and reset them now:
  bootforge attach node01 node02 --boot once --reset --server http://bootsvc:8080 --token-file t

  # Eject and drop the CD boot override:
  bootforge detach --all --server http://bootsvc:8080 --token-file t

The service does the Redfish work: it needs --bmc-credentials, and each host a `bmc` column
(its BMC's Redfish root, https://10.1.0.11, or System URL). Prints one line per host: ok, or the
BMC's own error message; the exit status is 1 if any host failed. The URL given to a BMC expires
(--ttl, default 90 days); attach again to renew it. See docs/BMC.md.";

/// Mount each host's boot ISO on its BMC's virtual CD (Redfish), through the boot service.
#[derive(clap::Args, Debug)]
#[command(after_help = ATTACH_HELP)]
pub struct AttachArgs {
    #[command(flatten)]
    pub hosts: BmcHosts,
    /// Which boots use the CD: continuous (every boot, until detached), once (the next boot
    /// only), none (mount only; leave the boot order alone).
    #[arg(long, default_value = "continuous", value_parser = ["continuous", "once", "none"])]
    pub boot: String,
    /// Reset (or power on) each machine once its CD is mounted.
    #[arg(long)]
    pub reset: bool,
    /// EFI loaders in the ISO, comma-separated: x86_64, arm64.
    #[arg(long, value_name = "ARCHES", default_value = "x86_64")]
    pub arch: String,
    /// UEFI loader: ipxe or snponly.
    #[arg(long, default_value = "ipxe")]
    pub efi_loader: String,
    /// Seconds the URL handed to each BMC stays valid (at most a year).
    #[arg(long, value_name = "SECONDS", default_value_t = 90 * 24 * 3600)]
    pub ttl: u64,
}

/// Eject each host's virtual CD and drop its CD boot override (Redfish), through the service.
#[derive(clap::Args, Debug)]
#[command(after_help = ATTACH_HELP)]
pub struct DetachArgs {
    #[command(flatten)]
    pub hosts: BmcHosts,
}

/// Which hosts, and how to reach the service.
#[derive(clap::Args, Debug)]
pub struct BmcHosts {
    /// Host names (or --all).
    #[arg(value_name = "HOSTNAME", required_unless_present = "all", conflicts_with = "all")]
    pub hosts: Vec<String>,
    /// Every inventory host with a `bmc` column.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: BmcClient,
}

/// How the commands that work on hosts' BMCs reach the service.
#[derive(clap::Args, Debug)]
pub struct BmcClient {
    /// Base URL of the boot service: http://… or https://….
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The CA certificate (PEM) that issued the service's certificate, for an https:// --server
    /// with a private CA (trusted besides the public roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the API token (first line; role reimage).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// BMCs worked on at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub jobs: usize,
}

/// `bootforge attach` / `detach`: one API request per host, in parallel; `Ok(false)` if any failed.
pub fn bmc_media(hosts: BmcHosts, action: client::MediaAction) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    let c = &hosts.client;
    let token = client::read_token(&c.token_file)?;
    let list = if hosts.all {
        let list = client::hosts_with_bmc(&c.server, c.ca_file.as_deref(), &token)?;
        anyhow::ensure!(!list.is_empty(), "no inventory host has a `bmc` column value");
        list
    } else {
        // A host named twice is worked on once.
        let mut seen = std::collections::HashSet::new();
        hosts.hosts.into_iter().filter(|h| seen.insert(h.clone())).collect()
    };
    let results = client::bmc_media(
        &c.server,
        c.ca_file.as_deref(),
        &token,
        &list,
        &action,
        c.jobs,
        std::io::stderr().is_terminal(),
    )?;
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    for (line, _) in &results {
        println!("{line}");
    }
    if failed > 0 {
        eprintln!("{failed} of {} hosts failed", results.len());
    }
    Ok(failed == 0)
}

pub fn attach(args: AttachArgs) -> anyhow::Result<bool> {
    let body = serde_json::json!({
        "boot": args.boot,
        "reset": args.reset,
        "arch": args.arch,
        "efi_loader": args.efi_loader,
        "ttl": args.ttl,
    });
    bmc_media(args.hosts, client::MediaAction::Attach(body))
}

pub fn detach(args: DetachArgs) -> anyhow::Result<bool> {
    bmc_media(args.hosts, client::MediaAction::Detach)
}

const POWER_HELP: &str = "\
Examples:
  # Power two nodes on:
  bootforge power node01 node02 on --server http://bootsvc:8080 --token-file ~/.bootforge-token

  # Force every node with a BMC off:
  bootforge power --all force-off --yes --server http://bootsvc:8080 --token-file t

The last word is the action: on, off (graceful shutdown), force-off, restart (graceful),
force-restart. With --all, every action but `on` needs --yes. The service sends the BMC's ComputerSystem.Reset with the matching ResetType
(one the BMC allows), and audits it. Prints one line per host; the exit status is 1 if any host
failed. See docs/BMC.md.";

/// Power hosts on, off or restart them through their BMCs (Redfish), through the service.
#[derive(clap::Args, Debug)]
#[command(after_help = POWER_HELP)]
pub struct PowerArgs {
    /// Host names (or --all), then the action: on, off, force-off, restart, force-restart.
    #[arg(value_name = "HOSTNAME… ACTION", required = true)]
    pub words: Vec<String>,
    /// Every inventory host with a `bmc` column.
    #[arg(long)]
    pub all: bool,
    /// Confirms an --all that takes machines down (every action but `on`).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub client: BmcClient,
}

/// `bootforge power`: one `POST /hosts/{h}/power` per host, in parallel.
pub fn power(args: PowerArgs) -> anyhow::Result<bool> {
    let mut words = args.words;
    let action = words.pop().expect("clap requires one word");
    let action: crate::redfish::PowerAction =
        action.parse().map_err(|e: String| anyhow::anyhow!("{e} (the last word is the action)"))?;
    anyhow::ensure!(
        args.all == words.is_empty(),
        "name the hosts before the action, or give --all (not both)"
    );
    anyhow::ensure!(
        !args.all || args.yes || action == crate::redfish::PowerAction::On,
        "--all {} takes every machine with a BMC down: add --yes if that is what you mean",
        action.as_str()
    );
    bmc_media(
        BmcHosts { hosts: words, all: args.all, client: args.client },
        client::MediaAction::Power(action.as_str()),
    )
}

/// `--bmc-refresh`: 0, or a number of seconds in [`crate::serve::app::config::BMC_REFRESH_SECS`].
fn parse_bmc_refresh(text: &str) -> Result<u64, String> {
    let range = crate::serve::app::config::BMC_REFRESH_SECS;
    match text.parse::<u64>() {
        Ok(0) => Ok(0),
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "must be 0 (no background reads) or {} to {} seconds",
            range.start(),
            range.end()
        )),
    }
}

/// `--bmc-refresh-jobs`: 1 to [`crate::serve::app::config::MAX_BMC_REFRESH_JOBS`].
fn parse_bmc_refresh_jobs(text: &str) -> Result<usize, String> {
    let max = crate::serve::app::config::MAX_BMC_REFRESH_JOBS;
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be 1 to {max}")),
    }
}

#[cfg(test)]
mod bmc_refresh_tests {
    use super::*;

    #[test]
    fn bmc_refresh_and_jobs_are_range_checked() {
        assert_eq!(parse_bmc_refresh("0"), Ok(0));
        assert_eq!(parse_bmc_refresh("5"), Ok(5));
        assert_eq!(parse_bmc_refresh("86400"), Ok(86_400));
        for bad in ["4", "86401", "18446744073709551615", "-1", "x"] {
            let e = parse_bmc_refresh(bad).unwrap_err();
            assert!(e.contains("0 (no background reads) or 5 to 86400"), "{bad}: {e}");
        }
        assert_eq!(parse_bmc_refresh_jobs("1"), Ok(1));
        assert_eq!(parse_bmc_refresh_jobs("32"), Ok(32));
        assert!(parse_bmc_refresh_jobs("0").is_err());
        assert!(parse_bmc_refresh_jobs("33").is_err());
    }

    #[test]
    fn power_all_that_takes_machines_down_needs_yes() {
        let args = |words: &[&str], yes: bool| PowerArgs {
            words: words.iter().map(|w| w.to_string()).collect(),
            all: true,
            yes,
            client: BmcClient {
                server: "http://127.0.0.1:9".into(),
                ca_file: None,
                token_file: "/nonexistent/token".into(),
                jobs: 1,
            },
        };
        for action in ["off", "force-off", "restart", "force-restart"] {
            let e = power(args(&[action], false)).unwrap_err().to_string();
            assert!(e.contains("add --yes"), "{action}: {e}");
            // With --yes it gets past the check (and fails on the missing token file).
            let e = power(args(&[action], true)).unwrap_err().to_string();
            assert!(!e.contains("add --yes"), "{action}: {e}");
        }
    }
}
