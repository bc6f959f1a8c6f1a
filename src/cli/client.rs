//! `bootforge reimage`, `media-url`, `attach` and `detach`: thin clients of the HTTP API, one
//! request per host.
//!
//! Every client reaches the service at `--server`, `http://` or `https://`; over https it trusts
//! Mozilla's roots plus `--ca-file` (a private CA, PEM), through [`crate::cafile`] like every
//! TLS client of bootforge. A certificate it refuses is reported with what to do about it.

use std::path::Path;
use std::time::Duration;

/// An HTTP agent for the service at `server`, trusting `ca_file` besides the public roots.
pub fn agent(
    server: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<ureq::Agent> {
    let scheme = server.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    anyhow::ensure!(
        matches!(scheme.as_deref(), Some("http" | "https")),
        "--server {server:?} must start with http:// or https://"
    );
    let mut builder = ureq::AgentBuilder::new().timeout(timeout);
    if scheme.as_deref() == Some("https") || ca_file.is_some() {
        let config = crate::cafile::client_config(
            ca_file,
            "--ca-file",
            crate::cafile::Trust::PublicAndFile,
        )?;
        builder = builder.tls_config(config);
    }
    Ok(builder.build())
}

/// Why the service could not be reached, with a hint when its certificate was refused.
pub fn unreachable(base: &str, e: &ureq::Error) -> String {
    match crate::cafile::certificate_hint(e) {
        Some(hint) => format!("cannot reach {base}: {e} ({hint})"),
        None => format!("cannot reach {base}: {e}"),
    }
}

/// What to do to each host.
#[derive(Debug, Clone)]
pub enum Action {
    /// `PUT /hosts/{h}/reimage`, with an optional profile.
    Flag(Option<String>),
    /// `DELETE /hosts/{h}/reimage`.
    Cancel,
}

/// Reads the API token from a file (first line, trimmed), naming the file in errors.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token)
}

/// Sends the action for every host and returns one line per host for the operator. Stops at
/// nothing: every host is tried, and the error lists the hosts that failed.
pub fn run(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
    hosts: &[String],
    action: &Action,
) -> anyhow::Result<Vec<String>> {
    let agent = agent(server, ca_file, Duration::from_secs(30))?;
    let base = server.trim_end_matches('/');
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for host in hosts {
        let url = format!("{base}/hosts/{}/reimage", crate::serve::util::encode(host));
        let auth = format!("Bearer {token}");
        let result = match action {
            Action::Flag(profile) => {
                let req = agent.put(&url).set("Authorization", &auth);
                match profile {
                    Some(p) => req
                        .set("Content-Type", "application/json")
                        .send_string(&serde_json::json!({ "profile": p }).to_string()),
                    None => req.call(),
                }
            }
            Action::Cancel => agent.delete(&url).set("Authorization", &auth).call(),
        };
        match result {
            Ok(resp) => {
                let v = json_of(resp);
                lines.push(match action {
                    Action::Flag(_) => format!(
                        "{host}: flagged for reimage with profile {} (phase {})",
                        v["profile"].as_str().unwrap_or("?"),
                        v["phase"].as_str().unwrap_or("?")
                    ),
                    Action::Cancel => {
                        if v["was_flagged"].as_bool() == Some(true) {
                            format!("{host}: reimage cancelled")
                        } else {
                            format!("{host}: was not flagged")
                        }
                    }
                });
            }
            Err(ureq::Error::Status(code, resp)) => {
                let v = json_of(resp);
                let msg = v["error"].as_str().unwrap_or("no details").to_string();
                lines.push(format!("{host}: HTTP {code}: {msg}"));
                failed.push(host.clone());
            }
            Err(e) => {
                lines.push(format!("{host}: {}", unreachable(base, &e)));
                failed.push(host.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(lines)
    } else {
        anyhow::bail!("{}\nfailed for: {}", lines.join("\n"), failed.join(", "))
    }
}

fn json_of(resp: ureq::Response) -> serde_json::Value {
    resp.into_string().ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// `POST /hosts/{host}/media-url` with `body` (the options as JSON): the answer, or the
/// server's own error message.
pub fn media_url(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
    host: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let agent = agent(server, ca_file, Duration::from_secs(60))?;
    let base = server.trim_end_matches('/');
    let url = format!("{base}/hosts/{}/media-url", crate::serve::util::encode(host));
    match agent
        .post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(resp) => Ok(json_of(resp)),
        Err(ureq::Error::Status(code, resp)) => {
            let v = json_of(resp);
            anyhow::bail!("{host}: HTTP {code}: {}", v["error"].as_str().unwrap_or("no details"))
        }
        Err(e) => anyhow::bail!("{host}: {}", unreachable(base, &e)),
    }
}

/// `attach` (PUT) or `detach` (DELETE) of `/hosts/{host}/media`.
#[derive(Debug, Clone)]
pub enum MediaAction {
    /// The JSON body: boot, reset, arch, efi_loader, ttl.
    Attach(serde_json::Value),
    Detach,
    /// `POST /hosts/{h}/power` with this action.
    Power(&'static str),
}

/// The inventory hosts that have a BMC (`GET /hosts`, their `bmc` field), for `--all`.
pub fn hosts_with_bmc(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
) -> anyhow::Result<Vec<String>> {
    let agent = agent(server, ca_file, Duration::from_secs(60))?;
    let base = server.trim_end_matches('/');
    let v = match agent
        .get(&format!("{base}/hosts"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(resp) => json_of(resp),
        Err(ureq::Error::Status(code, resp)) => {
            let v = json_of(resp);
            anyhow::bail!(
                "listing hosts: HTTP {code}: {}",
                v["error"].as_str().unwrap_or("no details")
            )
        }
        Err(e) => anyhow::bail!("{}", unreachable(base, &e)),
    };
    Ok(v["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter(|h| h["bmc"].is_string())
                .filter_map(|h| h["hostname"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Runs `action` for every host, `jobs` at a time (BMCs are slow: seconds to a minute each), with
/// a progress bar when `progress`. Returns one line per host, in the order given, and whether
/// each succeeded. A BMC's own error message is passed on as the service reports it.
pub fn bmc_media(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
    hosts: &[String],
    action: &MediaAction,
    jobs: usize,
    progress: bool,
) -> anyhow::Result<Vec<(String, bool)>> {
    // A BMC may take minutes (task monitors, retries); the service bounds each step itself.
    let agent = agent(server, ca_file, Duration::from_secs(900))?;
    let base = server.trim_end_matches('/');
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(hosts.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} hosts, {elapsed}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(match action {
            MediaAction::Attach(_) => "attaching",
            MediaAction::Detach => "detaching",
            MediaAction::Power(_) => "powering",
        });
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<(String, bool)>>> =
        hosts.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, hosts.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(host) = hosts.get(i) else { break };
                let line = one_media(&agent, base, token, host, action);
                bar.inc(1);
                if !line.1 {
                    bar.println(&line.0);
                }
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
            });
        }
    });
    bar.finish_and_clear();
    Ok(results
        .into_iter()
        .map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every host was run"))
        .collect())
}

fn one_media(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    host: &str,
    action: &MediaAction,
) -> (String, bool) {
    let leaf = if matches!(action, MediaAction::Power(_)) { "power" } else { "media" };
    let url = format!("{base}/hosts/{}/{leaf}", crate::serve::util::encode(host));
    let auth = format!("Bearer {token}");
    let started = std::time::Instant::now();
    let result = match action {
        MediaAction::Attach(body) => agent
            .put(&url)
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
        MediaAction::Detach => agent.delete(&url).set("Authorization", &auth).call(),
        MediaAction::Power(a) => agent
            .post(&url)
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(&serde_json::json!({ "action": a }).to_string()),
    };
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(resp) => {
            let v = json_of(resp);
            let r = &v["report"];
            let line = match action {
                MediaAction::Attach(_) => {
                    let boot = match r["boot_override"].as_str() {
                        Some(mode) => format!("boots from CD: {mode}"),
                        None => "boot override untouched".to_string(),
                    };
                    let reset =
                        r["reset"].as_str().map(|t| format!(", reset ({t})")).unwrap_or_default();
                    format!(
                        "{host}: ok: ISO attached, {boot}{reset}; URL valid until {} ({secs:.1} s)",
                        v["url_expires_at"].as_str().unwrap_or("?")
                    )
                }
                MediaAction::Detach => {
                    let what =
                        if r["ejected"].is_string() { "ejected" } else { "nothing was mounted" };
                    format!("{host}: ok: {what} ({secs:.1} s)")
                }
                MediaAction::Power(a) => format!(
                    "{host}: ok: {a} sent (ResetType {}) ({secs:.1} s)",
                    v["reset_type"].as_str().unwrap_or("?")
                ),
            };
            (line, true)
        }
        Err(ureq::Error::Status(code, resp)) => {
            let v = json_of(resp);
            (
                format!(
                    "{host}: FAILED (HTTP {code}): {}",
                    v["error"].as_str().unwrap_or("no details")
                ),
                false,
            )
        }
        Err(e) => (format!("{host}: FAILED: {}", unreachable(base, &e)), false),
    }
}
