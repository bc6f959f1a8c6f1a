//! `bootforge reimage` and `media-url`: thin clients of the HTTP API, one request per host.

use std::path::Path;
use std::time::Duration;

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
    token: &str,
    hosts: &[String],
    action: &Action,
) -> anyhow::Result<Vec<String>> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let base = server.trim_end_matches('/');
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for host in hosts {
        let url = format!("{base}/hosts/{}/reimage", super::util::encode(host));
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
                lines.push(format!("{host}: cannot reach {base}: {e}"));
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
    token: &str,
    host: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let base = server.trim_end_matches('/');
    let url = format!("{base}/hosts/{}/media-url", super::util::encode(host));
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
        Err(e) => anyhow::bail!("{host}: cannot reach {base}: {e}"),
    }
}
