//! Discovery's reads: every chosen row's BMC asked for its System's interfaces, UUID and serial
//! (see [`crate::redfish::SystemNics`]), at most [`CONCURRENCY`] at once, each within the
//! service's BMC deadline (`--bmc-deadline`), so one dead or slow BMC costs its own row an
//! error and delays no other row beyond that deadline.
//!
//! The credentials stay here: a caller names hosts, the service finds each row's `bmc` and the
//! credentials file's line for it. Each read runs through [`Bmc::run`] as a status read
//! ([`Use::Read`]), so discovery can never take the slots kept for attach and detach.
//!
//! What comes back is parsed into the pure decision's input ([`Found`]); every text has been
//! made safe by the Redfish client, and every error passes through [`scrub`].

use crate::inventory::{BmcUrl, SystemUuid};
use crate::redfish::{self, CredentialsFile, SystemNics};
use crate::serve::app::bmc::{scrub, Use};
use crate::serve::app::service::Service;
use crate::serve::domain::discover::{link_of, Found, Nic};
use crate::serve::web::reply::HttpError;
use std::sync::Arc;

/// BMCs read at once by one discovery.
pub const CONCURRENCY: usize = 8;

/// One host's read: what its BMC said, or why it could not be asked or did not answer.
pub struct Read {
    pub host: String,
    pub result: Result<(Found, SystemNics), String>,
}

/// Reads the BMC of each `(host, bmc)`; the answers come back in the order given.
pub async fn read_all(
    svc: &Arc<Service>,
    rows: Vec<(String, BmcUrl)>,
) -> Result<Vec<Read>, HttpError> {
    let bmc = svc.bmc.as_ref().ok_or_else(|| {
        HttpError::new(
            409,
            "this service was started without --bmc-credentials; it cannot talk to BMCs",
        )
    })?;
    let file = CredentialsFile::load(&bmc.credentials).map_err(|e| {
        tracing::error!("the BMC credentials file cannot be used: {e}");
        HttpError::new(503, "the BMC credentials file cannot be used; the server log says why")
    })?;
    let file = Arc::new(file);
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(rows.len());
    for (host, url) in rows {
        let (svc, file, gate) = (svc.clone(), file.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let result = match gate.acquire_owned().await {
                Ok(_permit) => read_one(&svc, &file, &host, url).await,
                Err(_) => Err("discovery was stopped".to_string()),
            };
            Read { host, result }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.map_err(|_| HttpError::internal("a discovery read panicked"))?);
    }
    Ok(out)
}

async fn read_one(
    svc: &Service,
    file: &CredentialsFile,
    host: &str,
    url: BmcUrl,
) -> Result<(Found, SystemNics), String> {
    let bmc = svc.bmc.as_ref().expect("checked by read_all");
    let target = file.target(&url).map_err(|e| {
        tracing::warn!(host, "{e}");
        match e {
            redfish::TargetError::NoLine { .. } => {
                format!("no line of the BMC credentials file covers this BMC ({})", url.host())
            }
            redfish::TargetError::PlainHttp { .. } => e.to_string(),
        }
    })?;
    let answer = bmc
        .run(Use::Read, &url, (), move |client, progress| client.nics_within(&target, progress))
        .await
        .map_err(|e| e.message)?;
    let nics = answer.map_err(|e| {
        let text = scrub(&e.to_string());
        tracing::warn!(host, "discovery: {text}");
        text
    })?;
    Ok((found(&nics), nics))
}

/// The decision's input from what the BMC reported: interfaces with a MAC, the UUID when it
/// parses (a BMC's nil or all-ones UUID means none), the serial when it is a valid `serial`
/// that a spreadsheet would not read as a formula (see [`formula_like`]).
pub fn found(nics: &SystemNics) -> Found {
    Found {
        nics: nics
            .interfaces
            .iter()
            .filter_map(|n| {
                Some(Nic {
                    id: n.id.clone(),
                    mac: n.mac?,
                    link: link_of(
                        n.link_status.as_deref(),
                        n.interface_enabled,
                        n.state.as_deref(),
                    ),
                    link_reported: n.link_status.is_some(),
                    ipv4: n.ipv4.clone(),
                })
            })
            .collect(),
        uuid: nics.uuid.as_deref().and_then(|u| u.parse::<SystemUuid>().ok()),
        serial: nics
            .serial
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter(|s| !formula_like(s))
            .and_then(|s| crate::inventory::parse_serial(s).ok()),
    }
}

/// Whether a value would be taken for a formula by a spreadsheet that opens the CSV (its first
/// character is `=`, `+`, `-` or `@`). A serial comes from the BMC, not from an operator, and
/// `--apply` writes it into the inventory file that people open in spreadsheets: such a serial
/// is not proposed (no real serial number starts so), so a hostile BMC cannot plant a formula.
fn formula_like(text: &str) -> bool {
    text.starts_with(['=', '+', '-', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(serial: &str) -> SystemNics {
        SystemNics {
            system: "https://bmc/redfish/v1/Systems/1".into(),
            uuid: None,
            serial: Some(serial.into()),
            interfaces: vec![],
            truncated: false,
        }
    }

    #[test]
    fn a_serial_a_spreadsheet_would_run_is_not_proposed() {
        for hostile in ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)"] {
            assert_eq!(found(&reported(hostile)).serial, None, "{hostile}");
        }
        assert_eq!(found(&reported(" CZ-1234 ")).serial.as_deref(), Some("CZ-1234"));
    }
}
