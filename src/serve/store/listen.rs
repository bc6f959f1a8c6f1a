//! PostgreSQL only: following other replicas' host changes as they commit. Every change sends a
//! `NOTIFY` on [`CHANNEL`] inside its own transaction ([`super::hosts`]), so PostgreSQL delivers
//! it to every listening session when, and only if, it commits, in commit order. This task holds
//! one connection of its own (sqlx's `PgListener`: the `Any` pools cannot listen), applies each
//! notification to the deciding set ([`super::hosts::Deciding::learn`]), and so a flag set
//! through one replica is decided by the others within milliseconds instead of at their next
//! 100 ms poll.
//!
//! Notifications sent while the listener is not connected are lost (PostgreSQL keeps none for a
//! session that is not there). So after every connect, first `LISTEN`, then a full read of the
//! deciding set, and only then is the listener counted as live ([`Store::poll`] stops its
//! 100 ms reads): whatever committed before the `LISTEN` is in the read, whatever after is
//! notified. Any error, a lost connection, or an outage seen by the health monitor
//! ([`super::health`], which sees a hung server that this connection would wait on forever)
//! drops the connection and starts over after a backoff.
//!
//! The same connection listens on [`super::inventory::CHANNEL`]: a notification there is only a
//! wake-up. The version kept in `inventory_heard` for the catalog's reload tick is always the
//! one read from the database (after every `LISTEN`, and after each notification), never the
//! payload: a forged or stale payload (`NOTIFY bootforge_inventory, '999999'`, or a version
//! that went down with a restored backup) must not leave every replica reloading forever.
//!
//! Threat: anyone who can log in to the database can `NOTIFY` these channels. A host payload is
//! only a hint that makes a host "may decide" (checked against its row) or not; a payload that
//! does not parse is logged (bounded, escaped) and answered with a full read. An inventory
//! payload is not read at all.
//!
//! [`Store::poll`]: super::Store::poll

use super::health::{Health, MAX_BACKOFF, MIN_BACKOFF};
use super::hosts::{scan_deciding, News, SharedDeciding, CHANNEL};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::AnyPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the listener needs of the store.
pub(crate) struct Listener {
    pub options: PgConnectOptions,
    pub reader: AnyPool,
    pub deciding: SharedDeciding,
    pub health: Arc<Health>,
    /// Set while connected and resynced: [`super::Store::poll`] then skips its reads.
    pub listening: Arc<AtomicBool>,
    /// The inventory's version as last heard (see [`super::Store::inventory_version_hint`]).
    pub inventory_heard: Arc<AtomicU64>,
    pub shown: String,
}

/// Runs for the store's life (on its runtime; dropped with it).
pub(crate) async fn run(l: Listener) {
    let mut backoff = MIN_BACKOFF;
    let mut outages = l.health.outages();
    loop {
        outages.borrow_and_update();
        let ended = session(&l, &mut outages).await;
        l.listening.store(false, Ordering::SeqCst);
        match ended {
            Ok(()) => {
                tracing::warn!(database = %l.shown, "the change listener lost its connection; reconnecting, then re-reading every flagged host");
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(database = %l.shown, "the change listener cannot listen: {e}; trying again in {backoff:?}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, `LISTEN`, resync, then apply notifications until it ends.
async fn session(
    l: &Listener,
    outages: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(l.options.clone());
    let mut listener = PgListener::connect_with(&pool).await.map_err(|e| e.to_string())?;
    // A lost connection ends this session (so that we resync); no silent reconnect.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen_all([CHANNEL, super::inventory::CHANNEL]).await.map_err(|e| e.to_string())?;
    let scan = scan_deciding(super::engine::Engine::Postgres, &l.reader)
        .await
        .map_err(|e| format!("the full read after LISTEN failed: {e}"))?;
    l.deciding.write().unwrap_or_else(|p| p.into_inner()).replace(scan);
    let inventory = super::inventory::version(&l.reader)
        .await
        .map_err(|e| format!("the inventory's version after LISTEN cannot be read: {e}"))?;
    l.inventory_heard.store(inventory, Ordering::SeqCst);
    l.listening.store(true, Ordering::SeqCst);
    tracing::info!(database = %l.shown, "listening for host changes of other replicas");
    loop {
        // Dropping `try_recv` midway (an outage) is fine: the connection is dropped with it.
        let next = tokio::select! {
            n = listener.try_recv() => n,
            _ = outages.changed() => return Err("the database went away".into()),
        };
        match next {
            Ok(Some(n)) if n.channel() == super::inventory::CHANNEL => {
                // A wake-up only: the version is the database's (one small query), whatever
                // the payload says. The notification is sent inside the writing transaction, so
                // the new version is committed by the time it arrives.
                let v = super::inventory::version(&l.reader)
                    .await
                    .map_err(|e| format!("the inventory's version cannot be read: {e}"))?;
                l.inventory_heard.store(v, Ordering::SeqCst);
            }
            Ok(Some(n)) => match News::parse(n.payload()) {
                Some(news) => l.deciding.write().unwrap_or_else(|p| p.into_inner()).learn(news),
                None => {
                    let shown: String = n.payload().chars().take(80).collect();
                    tracing::warn!(payload = %shown.escape_debug(), "a notification on {CHANNEL} that this service did not send; re-reading every flagged host");
                    let scan = scan_deciding(super::engine::Engine::Postgres, &l.reader)
                        .await
                        .map_err(|e| e.to_string())?;
                    l.deciding.write().unwrap_or_else(|p| p.into_inner()).replace(scan);
                }
            },
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
