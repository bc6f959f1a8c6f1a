//! `GET /metrics`: counters in the Prometheus text format. They count what this instance did
//! since it started; with several instances, sum them in the query.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// `/boot` answers by answer (`install`/`local`) and reason.
    boot: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// HTTP responses by status code.
    responses: Mutex<BTreeMap<u16, u64>>,
    pub flags_set: AtomicU64,
    pub flags_cleared: AtomicU64,
    pub installs_done: AtomicU64,
    pub installs_failed: AtomicU64,
    pub reloads_ok: AtomicU64,
    /// Connections closed at once because their peer address held too many.
    pub connections_refused: AtomicU64,
    /// Bytes of `/media/` images answered (whole or ranges).
    pub media_bytes: AtomicU64,
    /// TLS handshakes completed, by protocol version (`1.2`, `1.3`).
    tls_handshakes: Mutex<BTreeMap<&'static str, u64>>,
    /// TLS handshakes that failed, by reason (a small fixed set: see
    /// [`crate::serve::web::accept::HandshakeFailure`]).
    tls_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// The install gauges' text and when it was computed: `/metrics` needs no login, so a
    /// scrape must not query the database each time (see `api::admin::metrics`).
    pub install_gauges: Mutex<Option<(std::time::Instant, String)>>,
}

impl Metrics {
    pub fn boot(&self, answer: &'static str, reason: &'static str) {
        let mut m = self.boot.lock().unwrap_or_else(|p| p.into_inner());
        // Reasons are a small fixed set of kinds (the detail text is not a label).
        *m.entry((answer, reason)).or_default() += 1;
    }

    pub fn response(&self, status: u16) {
        *self.responses.lock().unwrap_or_else(|p| p.into_inner()).entry(status).or_default() += 1;
    }

    pub fn media_bytes(&self, n: u64) {
        self.media_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn tls_handshake(&self, version: &'static str) {
        *self
            .tls_handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(version)
            .or_default() += 1;
    }

    pub fn tls_handshake_failed(&self, reason: &'static str) {
        *self.tls_failures.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() +=
            1;
    }

    pub fn refused_connection(&self) {
        Metrics::inc(&self.connections_refused);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(
        &self,
        nodes: usize,
        generation: u64,
        reload_failures: u64,
        audit_dropped: u64,
    ) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ =
            writeln!(w, "# HELP bootforge_boot_answers_total /boot answers by answer and reason.");
        let _ = writeln!(w, "# TYPE bootforge_boot_answers_total counter");
        for ((answer, reason), n) in self.boot.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                w,
                "bootforge_boot_answers_total{{answer=\"{answer}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(w, "# HELP bootforge_http_responses_total HTTP responses by status code.");
        let _ = writeln!(w, "# TYPE bootforge_http_responses_total counter");
        for (code, n) in self.responses.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(w, "bootforge_http_responses_total{{code=\"{code}\"}} {n}");
        }
        let counters = [
            ("bootforge_flags_set_total", "Reimage flags set through the API.", &self.flags_set),
            (
                "bootforge_flags_cleared_total",
                "Reimage flags cleared (cancel, done, first answer).",
                &self.flags_cleared,
            ),
            (
                "bootforge_installs_done_total",
                "Installs that called back done.",
                &self.installs_done,
            ),
            (
                "bootforge_installs_failed_total",
                "Installs that reported failure.",
                &self.installs_failed,
            ),
            ("bootforge_reloads_total", "Successful inventory/profile reloads.", &self.reloads_ok),
            (
                "bootforge_connections_refused_total",
                "Connections closed at once: their peer address was at its connection cap.",
                &self.connections_refused,
            ),
            (
                "bootforge_media_bytes_total",
                "Bytes of /media/ images answered, whole or in ranges.",
                &self.media_bytes,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                w,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(w, "# HELP bootforge_tls_handshakes_total TLS handshakes completed, by protocol version.\n# TYPE bootforge_tls_handshakes_total counter");
        for (version, n) in self.tls_handshakes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(w, "bootforge_tls_handshakes_total{{version=\"{version}\"}} {n}");
        }
        let _ = writeln!(w, "# HELP bootforge_tls_handshake_failures_total TLS handshakes that failed, by reason (timeout: not finished within the header timeout; closed: the client left; untrusted: the client refused the certificate; protocol: anything else, such as bytes that are not TLS).\n# TYPE bootforge_tls_handshake_failures_total counter");
        for reason in crate::serve::web::accept::HandshakeFailure::ALL {
            let reason = reason.label();
            let n =
                self.tls_failures.lock().unwrap_or_else(|p| p.into_inner()).get(reason).copied();
            let _ = writeln!(
                w,
                "bootforge_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
                n.unwrap_or(0)
            );
        }
        let _ = writeln!(w, "# HELP bootforge_reload_failures_total Reloads that failed (old inputs kept).\n# TYPE bootforge_reload_failures_total counter\nbootforge_reload_failures_total {reload_failures}");
        let _ = writeln!(w, "# HELP bootforge_audit_notes_dropped_total Boot and refusal records dropped because the audit writer fell behind.\n# TYPE bootforge_audit_notes_dropped_total counter\nbootforge_audit_notes_dropped_total {audit_dropped}");
        let _ = writeln!(w, "# HELP bootforge_inventory_nodes Nodes in the loaded inventory.\n# TYPE bootforge_inventory_nodes gauge\nbootforge_inventory_nodes {nodes}");
        let _ = writeln!(w, "# HELP bootforge_inputs_generation Generation of the loaded inventory and profiles.\n# TYPE bootforge_inputs_generation gauge\nbootforge_inputs_generation {generation}");
        s
    }
}
