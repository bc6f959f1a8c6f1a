//! The route table: a request path, split on `/` *before* percent-decoding, becomes a [`Route`].
//!
//! Splitting first means an encoded slash stays inside its segment (`/hosts/n1%2Freimage` is the
//! host `n1/reimage`, which no host name matches), never a separator. Segments are then decoded
//! one by one; what a handler receives is already split into the pieces it needs, with file
//! paths checked for `..`, empty and hidden segments, NUL and backslash here, once.

use percent_encoding::percent_decode_str;

/// Where a request goes. Host segments are decoded but not yet validated (the handler answers
/// an invalid one in its own way: `/boot` boots local, the API says 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Status,
    Metrics,
    /// `/boot/{host}`.
    Boot(String),
    /// Anything deeper under `/boot/`: still answered with a local boot, never an error.
    BootOther,
    /// `/config/{host}[/~TOKEN]/{file...}`; `file` is `None` when missing or malformed.
    Config {
        host: String,
        token: Option<String>,
        file: Option<String>,
    },
    /// `/assets/{path...}`; `None` when the path is malformed.
    Asset(Option<String>),
    /// `/media/{file}`: a node's image (`HOST.iso`, `HOST.usb.img`, `HOST.efi.img`).
    Media(String),
    Hosts,
    Host(String),
    /// `/hosts/{host}/media-url`: mint a signed `/media/` URL.
    MediaUrl(String),
    /// `/hosts/{host}/media`: the host's BMC virtual CD (GET shows, PUT attaches, DELETE ejects).
    BmcMedia(String),
    Reimage(String),
    /// `/hosts/{host}/hardware`: the cached BMC hardware state (GET; `?refresh=1` reads it now).
    Hardware(String),
    /// `/hosts/{host}/power`: a power action through the BMC (POST).
    Power(String),
    Done(String),
    /// `/hosts/{host}/started`: the installer reports that it runs.
    Started(String),
    Failed(String),
    Events,
    Reload,
    /// `/ui` (redirected to `/ui/`) and `/ui/{file}`: the console's embedded page and files;
    /// `None` for `/ui` itself.
    Ui(Option<String>),
    /// `/session`: the console's login (POST), who am I (GET), logout (DELETE).
    Session,
    /// `/sessions?name=NAME`: an admin ends every directory session of an account (DELETE).
    Sessions,
    /// `/inventory`: the CSV (GET) and its replacement (PUT).
    Inventory,
    /// `/inventory/check`: validate a CSV without replacing anything.
    InventoryCheck,
    /// `/inventory/hosts`: add a row (POST).
    InventoryRows,
    /// `/inventory/hosts/{host}`: change (PUT) or remove (DELETE) a row.
    InventoryRow(String),
    /// `/discover`: propose (and apply) MACs, UUIDs and serials from the BMCs (POST).
    Discover,
    /// `/hosts/{host}/timeline`: the host's installs, step by step.
    Timeline(String),
    /// `/hosts/{host}/retry`: a new install of a failed or stalled one (POST).
    Retry(String),
    /// `/fleet/stats`: installs in progress, done and failed, durations.
    FleetStats,
    NotFound,
}

impl Route {
    pub fn parse(raw_path: &str) -> Route {
        let raw: Vec<&str> = raw_path.strip_prefix('/').unwrap_or(raw_path).split('/').collect();
        let seg = |i: usize| decode(raw[i]);
        match raw.as_slice() {
            ["healthz"] => Route::Healthz,
            ["status"] => Route::Status,
            ["metrics"] => Route::Metrics,
            ["boot", _] => Route::Boot(seg(1)),
            ["boot", _, _, ..] => Route::BootOther,
            ["config", _, rest @ ..] if !rest.is_empty() => {
                let (token, file) = match rest.split_first() {
                    Some((t, file)) if t.starts_with('~') => (Some(decode(&t[1..])), file),
                    _ => (None, rest),
                };
                Route::Config { host: seg(1), token, file: file_path(file) }
            }
            ["assets", rest @ ..] if !rest.is_empty() => Route::Asset(file_path(rest)),
            ["media", _] => Route::Media(seg(1)),
            ["hosts"] => Route::Hosts,
            ["hosts", _, "media-url"] => Route::MediaUrl(seg(1)),
            ["hosts", _, "media"] => Route::BmcMedia(seg(1)),
            ["hosts", _] => Route::Host(seg(1)),
            ["hosts", _, "reimage"] => Route::Reimage(seg(1)),
            ["hosts", _, "hardware"] => Route::Hardware(seg(1)),
            ["hosts", _, "power"] => Route::Power(seg(1)),
            ["hosts", _, "done"] => Route::Done(seg(1)),
            ["hosts", _, "started"] => Route::Started(seg(1)),
            ["hosts", _, "failed"] => Route::Failed(seg(1)),
            ["hosts", _, "timeline"] => Route::Timeline(seg(1)),
            ["hosts", _, "retry"] => Route::Retry(seg(1)),
            ["fleet", "stats"] => Route::FleetStats,
            ["events"] => Route::Events,
            ["admin", "reload"] => Route::Reload,
            ["ui"] => Route::Ui(None),
            ["ui", ""] => Route::Ui(Some("index.html".into())),
            ["ui", _] => Route::Ui(Some(seg(1))),
            ["session"] => Route::Session,
            ["sessions"] => Route::Sessions,
            ["inventory"] => Route::Inventory,
            ["inventory", "check"] => Route::InventoryCheck,
            ["inventory", "hosts"] => Route::InventoryRows,
            ["inventory", "hosts", _] => Route::InventoryRow(seg(2)),
            ["discover"] => Route::Discover,
            _ => Route::NotFound,
        }
    }

    /// The route's name for logs and the audit log: a fixed string, never the request's path.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Status => "/status",
            Route::Metrics => "/metrics",
            Route::Boot(_) | Route::BootOther => "/boot/{host}",
            Route::Config { .. } => "/config/{host}/{file}",
            Route::Asset(_) => "/assets/{path}",
            Route::Media(_) => "/media/{file}",
            Route::MediaUrl(_) => "/hosts/{host}/media-url",
            Route::BmcMedia(_) => "/hosts/{host}/media",
            Route::Hosts => "/hosts",
            Route::Host(_) => "/hosts/{host}",
            Route::Reimage(_) => "/hosts/{host}/reimage",
            Route::Hardware(_) => "/hosts/{host}/hardware",
            Route::Power(_) => "/hosts/{host}/power",
            Route::Done(_) => "/hosts/{host}/done",
            Route::Started(_) => "/hosts/{host}/started",
            Route::Failed(_) => "/hosts/{host}/failed",
            Route::Events => "/events",
            Route::Reload => "/admin/reload",
            Route::Ui(_) => "/ui/{file}",
            Route::Session => "/session",
            Route::Sessions => "/sessions",
            Route::Inventory => "/inventory",
            Route::InventoryCheck => "/inventory/check",
            Route::InventoryRows => "/inventory/hosts",
            Route::InventoryRow(_) => "/inventory/hosts/{host}",
            Route::Discover => "/discover",
            Route::Timeline(_) => "/hosts/{host}/timeline",
            Route::Retry(_) => "/hosts/{host}/retry",
            Route::FleetStats => "/fleet/stats",
            Route::NotFound => "-",
        }
    }

    /// The methods the route answers (the `Allow` header of a 405). Methods are compared
    /// case-sensitively (RFC 9110): `get` is not `GET`. `HEAD` is offered only where answering
    /// changes nothing, so a `HEAD` can never open or end an install.
    pub fn allow(&self) -> &'static str {
        match self {
            Route::Healthz | Route::Status | Route::Metrics | Route::Hosts | Route::Host(_) => {
                "GET, HEAD"
            }
            Route::Events | Route::Asset(_) | Route::Media(_) => "GET, HEAD",
            Route::MediaUrl(_) => "POST",
            // GET asks the BMC (a slow remote call): not offered as HEAD.
            Route::BmcMedia(_) => "GET, PUT, DELETE",
            // A boot answer may open an install; a config fetch is audited: GET only.
            Route::Boot(_) | Route::BootOther | Route::Config { .. } => "GET",
            Route::Reimage(_) => "PUT, DELETE",
            // `?refresh=1` may ask the BMC: not offered as HEAD.
            Route::Hardware(_) => "GET",
            Route::Power(_) => "POST",
            // iPXE can only GET; installers POST.
            Route::Done(_) | Route::Started(_) | Route::Failed(_) => "GET, POST",
            Route::Reload => "POST",
            Route::Ui(_) => "GET, HEAD",
            Route::Session => "GET, POST, DELETE",
            Route::Sessions => "DELETE",
            Route::Inventory => "GET, PUT",
            Route::InventoryCheck | Route::InventoryRows => "POST",
            Route::InventoryRow(_) => "PUT, DELETE",
            // Reads every chosen BMC: never a GET.
            Route::Discover => "POST",
            Route::Timeline(_) | Route::FleetStats => "GET, HEAD",
            Route::Retry(_) => "POST",
            Route::NotFound => "",
        }
    }

    pub fn allows(&self, method: &str) -> bool {
        self.allow().split(", ").any(|m| m == method)
    }
}

/// Decodes one segment; bytes that are not UTF-8 become U+FFFD, which no host name, profile or
/// file name accepts.
fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Decodes a relative file path segment by segment; `None` if any segment is empty, `.`, `..`,
/// hidden (`.x`), starts with `~` (a token's shape: never taken as a file name, so never logged
/// as one), or holds `/`, `\` or NUL once decoded.
fn file_path(raw: &[&str]) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let mut parts = Vec::with_capacity(raw.len());
    for r in raw {
        let d = decode(r);
        let bad = d.is_empty()
            || d.starts_with('.')
            || d.starts_with('~')
            || d.contains(['/', '\\', '\0', '\u{fffd}']);
        if bad {
            return None;
        }
        parts.push(d);
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_slashes_stay_inside_their_segment() {
        assert_eq!(Route::parse("/hosts/n1%2Freimage"), Route::Host("n1/reimage".into()));
        assert_eq!(Route::parse("/hosts/n1/reimage"), Route::Reimage("n1".into()));
        assert_eq!(Route::parse("/hosts/n1/started"), Route::Started("n1".into()));
        assert_eq!(Route::parse("/boot/n%301"), Route::Boot("n01".into()));
        assert_eq!(Route::parse("/boot/a%2Fb"), Route::Boot("a/b".into()));
        assert_eq!(Route::parse("/boot/a/b"), Route::BootOther);
    }

    #[test]
    fn config_paths_split_the_token_and_refuse_tricks() {
        let c = |p: &str| Route::parse(p);
        assert_eq!(
            c("/config/n1/~abc/ks.cfg"),
            Route::Config {
                host: "n1".into(),
                token: Some("abc".into()),
                file: Some("ks.cfg".into())
            }
        );
        // Bug 4's shapes: a token with no file after it, or deeper in the path, is never a file.
        assert_eq!(
            c("/config/n1/~abc"),
            Route::Config { host: "n1".into(), token: Some("abc".into()), file: None }
        );
        assert_eq!(
            c("/config/n1/x/~abc/f"),
            Route::Config { host: "n1".into(), token: None, file: None }
        );
        for bad in [
            "/config/n1/../x",
            "/config/n1/%2e%2e/x",
            "/config/n1/a%2Fb",
            "/config/n1/.x",
            "/config/n1/a//b",
            "/config/n1/%ff",
        ] {
            assert!(matches!(c(bad), Route::Config { file: None, .. }), "{bad}");
        }
        assert_eq!(
            c("/config/n1/a/b.cfg"),
            Route::Config { host: "n1".into(), token: None, file: Some("a/b.cfg".into()) }
        );
        assert_eq!(c("/assets/rocky/%2e%2e%2fx"), Route::Asset(None));
        assert_eq!(c("/assets/rocky/vmlinuz"), Route::Asset(Some("rocky/vmlinuz".into())));
    }

    #[test]
    fn methods_are_case_sensitive_and_head_never_changes_state() {
        assert!(Route::Healthz.allows("GET") && !Route::Healthz.allows("get"));
        let callbacks =
            [Route::Done("h".into()), Route::Started("h".into()), Route::Failed("h".into())];
        for r in callbacks.into_iter().chain([Route::Boot("h".into())]) {
            assert!(!r.allows("HEAD"), "{r:?}");
        }
        assert!(Route::Asset(None).allows("HEAD"));
        assert!(!Route::NotFound.allows("GET"));
    }
}
