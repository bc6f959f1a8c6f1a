//! Health, status, metrics and reload: the service's own endpoints.

use crate::serve::app::guard::authorize;
use crate::serve::app::service::Service;
use crate::serve::domain::actor::{Actor, Role};
use crate::serve::domain::event::Event;
use crate::serve::util::{now_ms, rfc3339};
use crate::serve::web::reply::{HttpError, Reply};
use crate::serve::web::request::Req;
use std::sync::Arc;

/// `GET /healthz`: for load balancers, without a token; says nothing about the inputs. 503 with
/// `"database": "unreachable"` while the database does not answer the store's health checks
/// (see [`crate::serve::store::health`]): this replica then answers boots of flagged hosts
/// local and refuses API writes and logins, so a load balancer should send traffic elsewhere.
/// It costs no query (the checks run every second on their own connection), so anyone may call
/// it as often as they like; the reason is only in `/status`.
pub(crate) fn healthz(svc: &Service) -> Reply {
    let db = svc.store.health();
    let body = serde_json::json!({
        "status": if db.up { "ok" } else { "unavailable" },
        "database": if db.up { "ok" } else { "unreachable" },
        "generation": svc.catalog.snapshot().generation,
    });
    if db.up {
        Reply::json(&body)
    } else {
        Reply::json(&body)
            .with_status(503)
            .header("Retry-After", crate::serve::store::health::RETRY_AFTER_SECS.to_string())
    }
}

/// `GET /status` (role read): the inputs, reload errors and versions.
pub(crate) async fn status(svc: &Arc<Service>, req: &Req) -> Result<Reply, HttpError> {
    authorize(svc, req, Role::Read).await?;
    let snap = svc.catalog.snapshot();
    let reload = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let db = svc.store.health();
    Ok(Reply::json(&serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "nodes": snap.inventory.len(),
        "inventory": snap.inventory.source(),
        "profiles": snap.profiles.names().collect::<Vec<_>>(),
        "generation": snap.generation,
        "loaded_at": rfc3339(snap.loaded_at),
        "load_ms": snap.load_ms,
        "reload": reload,
        "api_enabled": svc.catalog.tokens().enabled(),
        "node_tokens": svc.secret.is_some(),
        "base_url": svc.default_base.preferred().map(|u| u.to_string()),
        "media_templates": svc.media.templates(),
        "media_epoch": svc.media.epoch,
        "started_at": rfc3339(svc.started_at),
        "uptime_secs": now_ms().saturating_sub(svc.started_at) / 1000,
        "firmware": svc.media.firmware_versions(),
        "ldap": svc.directory.as_ref().map(|d| d.source().to_string()),
        // The TLS listener's certificate: the one served, and why a reload failed if one did.
        "tls": svc.tls.as_ref().map(|c| c.status()),
        "sessions": svc.sessions.count().await.ok(),
        "database": {
            "engine": svc.store.engine().name(),
            "url": svc.store.shown(),
            "up": db.up,
            "since": rfc3339(db.since_ms),
            "last_error": db.error,
            "listening": svc.store.listening(),
            // How far the database's clock, by which windows are decided, is from this
            // machine's (a large value is worth fixing with NTP, though nothing depends on it).
            "clock_offset_ms": db.clock_offset_ms,
        },
    })))
}

pub(crate) fn metrics(svc: &Service) -> Reply {
    let snap = svc.catalog.snapshot();
    let failures = svc.catalog.status.lock().map(|s| s.failures).unwrap_or(0);
    let dropped = svc.audit.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let mut text = svc.metrics.render(snap.inventory.len(), snap.generation, failures, dropped);
    text.push_str(&svc.hardware.metrics(snap.inventory.nodes(), svc.store.now_ms()));
    text.push_str(&cached_install_gauges(svc, &snap));
    let mut r = Reply::text(text);
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r
}

/// How long the install gauges are served from memory before they are computed again.
const GAUGES_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The install gauges, computed at most once per [`GAUGES_FOR`] whatever the scrape rate:
/// `/metrics` is open to anyone who can reach the port, and each computation reads every
/// host's state (a query when anything changed) and the fetch progress.
fn cached_install_gauges(svc: &Service, snap: &crate::serve::inputs::catalog::Snapshot) -> String {
    let mut cache = svc.metrics.install_gauges.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, text)) = cache.as_ref() {
        if at.elapsed() < GAUGES_FOR {
            return text.clone();
        }
    }
    let mut text = String::new();
    // Held while computing: concurrent scrapes wait for this one rather than query too.
    install_gauges(svc, snap, &mut text);
    *cache = Some((std::time::Instant::now(), text.clone()));
    text
}

/// `bootforge_installs_in_progress` and `bootforge_installs_stalled` per profile, from the hosts'
/// states (the store's cached read, one fingerprint query when nothing changed) and their last
/// fetches in memory. Left out while the database does not answer.
fn install_gauges(svc: &Service, snap: &crate::serve::inputs::catalog::Snapshot, w: &mut String) {
    use crate::serve::app::progress::{in_progress, stall_of};
    use std::fmt::Write;
    let Ok(states) = svc.store.states_blocking() else { return };
    svc.last_boot.refresh_fetches(&svc.store, |h| snap.inventory.get(h).is_some());
    let now = svc.store.now_ms();
    // Every loaded profile, so a gauge goes back to 0 rather than vanishing.
    let mut by_profile: std::collections::BTreeMap<&str, (u64, u64)> =
        snap.profiles.names().map(|p| (p, (0, 0))).collect();
    for node in snap.inventory.nodes() {
        let Some(Ok(st)) = states.get(&node.hostname) else { continue };
        let Some(flag) = &st.flag else { continue };
        let Some(counts) = by_profile.get_mut(flag.profile.as_str()) else { continue };
        counts.0 += u64::from(in_progress(st));
        let fetched = svc.last_boot.fetched(&node.hostname);
        counts.1 += u64::from(stall_of(snap, st, fetched, now).stalled);
    }
    let _ = writeln!(w, "# HELP bootforge_installs_in_progress Installs begun and not ended (installing, started or failed), by profile.\n# TYPE bootforge_installs_in_progress gauge");
    for (p, (n, _)) in &by_profile {
        let _ = writeln!(w, "bootforge_installs_in_progress{{profile=\"{}\"}} {n}", label(p));
    }
    let _ = writeln!(w, "# HELP bootforge_installs_stalled Installs without progress for longer than their profile's stall_after, by profile.\n# TYPE bootforge_installs_stalled gauge");
    for (p, (_, n)) in &by_profile {
        let _ = writeln!(w, "bootforge_installs_stalled{{profile=\"{}\"}} {n}", label(p));
    }
}

pub(crate) async fn reload(svc: &Arc<Service>, req: &Arc<Req>) -> Result<Reply, HttpError> {
    let caller = authorize(svc, req, Role::Admin).await?;
    let peer = req.peer;
    svc.blocking(move |svc| {
        let reloaded = svc.catalog.reload_if_changed(true);
        if reloaded {
            crate::serve::app::metrics::Metrics::inc(&svc.metrics.reloads_ok);
            svc.sweep_orphans();
        }
        let status = svc.catalog.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The TLS certificate too (a pair that does not load keeps the old one serving).
        let tls_error = svc.tls.as_ref().and_then(|c| {
            c.reload_if_changed(true);
            c.status().last_error
        });
        let ok = reloaded && status.tokens_error.is_none() && tls_error.is_none();
        svc.audit.note(&Event::Reload { who: Actor::from(&caller), peer, ok });
        let generation = svc.catalog.snapshot().generation;
        let error = status.last_error.or(status.tokens_error).or(tls_error);
        let body = serde_json::json!({ "reloaded": ok, "generation": generation, "error": error });
        Reply::json(&body).with_status(if ok { 200 } else { 422 })
    })
    .await
}

/// A Prometheus label value: `\`, `"` and line feeds escaped, as the text format asks (a profile
/// is named by its directory, which may hold any of them).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label("e2e"), "e2e");
        assert_eq!(super::label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
