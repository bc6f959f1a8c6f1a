//! HTTP integration tests of `bootforge serve` against a real server on a loopback port, each
//! run twice: over plain HTTP, and over TLS (module [`over_tls`]).

#[path = "serve_support/mod.rs"]
mod support;

use support::*;

const MAC1: &str = "aa:bb:cc:dd:ee:01";

fn is_local(body: &str) -> bool {
    body.starts_with("#!ipxe\necho bootforge: local boot:") && !body.contains("install")
}

#[test]
fn boot_is_local_unless_flagged_and_flag_cycle_works() {
    let mut f = start(false);
    let b = f.base.clone();
    // Not flagged, unknown host, invalid host: 200 local boot.
    let r = call("GET", &boot_url(&b, "node01", MAC1, ""), None, None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(is_local(&r.body), "{}", r.body);
    assert!(r.body.contains("sanboot --no-describe --drive 0x80"), "{}", r.body);
    let r = call("GET", &boot_url(&b, "nobody", MAC1, ""), None, None);
    assert!(is_local(&r.body) && r.body.contains("not in the inventory"));
    let r = call("GET", &format!("{b}/boot/bad_host!"), None, None);
    assert_eq!(r.status, 200);
    assert!(is_local(&r.body));
    // USB medium: drive 0x81; deb1's local_boot column overrides to 0x81 even from CD.
    let r = call(
        "GET",
        &boot_url(&b, "node01", MAC1, "").replace("medium=cd", "medium=usb"),
        None,
        None,
    );
    assert!(r.body.contains("--drive 0x81"));
    let r = call("GET", &format!("{b}/boot/node01?mac={MAC1}"), None, None);
    assert!(r.body.contains("--drive 0x80"), "no medium means cd");
    let r = call("GET", &boot_url(&b, "deb1", "aa:bb:cc:dd:ee:51", ""), None, None);
    assert!(r.body.contains("--drive 0x81"), "{}", r.body);

    // Flag with the one-line operator request (profile from the CSV column).
    let r = call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["profile"], "e2e");
    assert_eq!(r.json()["phase"], "pending");

    // MAC mismatch (in either spelling) still boots local; the dash form of the right MAC works.
    let r = call("GET", &boot_url(&b, "node01", "aa:bb:cc:dd:ee:99", ""), None, None);
    assert!(is_local(&r.body) && r.body.contains("is not the inventory"), "{}", r.body);
    let r = call("GET", &format!("{b}/boot/node01?ip=1.2.3.4"), None, None);
    assert!(is_local(&r.body), "missing MAC boots local");
    let chain = call("GET", &boot_url(&b, "node01", "AA-BB-CC-DD-EE-01", ""), None, None);
    assert_eq!(chain.status, 200);
    assert!(chain.body.contains("bootforge-e2e: install chain for node01"), "{}", chain.body);
    let id = install_id(&chain.body);
    assert_eq!(id.len(), 32);
    // Asking again during the same install gives the same install id.
    let again = call("GET", &boot_url(&b, "node01", MAC1, ""), None, None);
    assert_eq!(install_id(&again.body), id);

    // Config is rendered for the node while flagged.
    let cfg = call("GET", &f.url("/config/node01/install.cfg"), None, None);
    assert_eq!(cfg.status, 200);
    assert!(cfg.body.contains("ip=10.0.0.11/24") && cfg.body.contains(&format!("install={id}")));
    assert_eq!(call("GET", &f.url("/config/node01/nope.cfg"), None, None).status, 404);
    assert!(matches!(call("GET", &f.url("/config/node01/../x"), None, None).status, 400 | 404));

    // A wrong install id changes nothing; failed keeps the flag; done clears it.
    let r =
        call("POST", &f.url(&format!("/hosts/node01/done?install={}", "0".repeat(32))), None, None);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call("POST", &f.url("/hosts/node01/done?install=0123"), None, None);
    assert_eq!(r.status, 400, "a malformed id is refused before the store: {}", r.body);
    assert_eq!(call("POST", &f.url("/hosts/node01/done"), None, None).status, 400);
    let r = call("POST", &f.url(&format!("/hosts/node01/failed?install={id}")), None, None);
    assert_eq!(r.status, 200);
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!((h["flagged"].as_bool(), h["phase"].as_str()), (Some(true), Some("failed")));
    assert_eq!(h["flag"]["install"]["failures"], 1);
    let r = call("GET", &f.url(&format!("/hosts/node01/done?install={id}")), None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!((h["flagged"].as_bool(), h["phase"].as_str()), (Some(false), Some("done")));
    assert_eq!(h["last_install"]["how"], "done");
    assert_eq!(h["last_boot"]["answer"], "install");
    assert!(h["last_boot"]["time"].as_str().unwrap().ends_with('Z'));
    // Replayed callback: nothing changes. Next boot is local, config is gone.
    assert_eq!(
        call("POST", &f.url(&format!("/hosts/node01/done?install={id}")), None, None).status,
        409
    );
    assert!(is_local(&call("GET", &boot_url(&b, "node01", MAC1, ""), None, None).body));
    assert_eq!(call("GET", &f.url("/config/node01/install.cfg"), None, None).status, 404);

    // A new reimage opens a new install; the old id cannot cancel it.
    call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    let chain2 = call("GET", &boot_url(&b, "node01", MAC1, ""), None, None);
    let id2 = install_id(&chain2.body);
    assert_ne!(id, id2);
    assert_eq!(
        call("POST", &f.url(&format!("/hosts/node01/done?install={id}")), None, None).status,
        409
    );
    assert!(!is_local(&call("GET", &boot_url(&b, "node01", MAC1, ""), None, None).body));
    // Cancel: local again, and the open install's callback is ignored.
    let r = call("DELETE", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    assert_eq!((r.status, r.json()["was_flagged"].as_bool()), (200, Some(true)));
    assert!(is_local(&call("GET", &boot_url(&b, "node01", MAC1, ""), None, None).body));
    assert_eq!(
        call("POST", &f.url(&format!("/hosts/node01/done?install={id2}")), None, None).status,
        409
    );

    // The audit log has the flag changes (with who) and boot answers, and no token.
    let ev = call("GET", &f.url("/events?since=0"), Some(READ_TOKEN), None);
    assert_eq!(ev.status, 200);
    let v = ev.json();
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event"] == "flag-set" && e["by"] == "ops"));
    assert!(events.iter().any(|e| e["event"] == "done"));
    assert!(events.iter().any(|e| e["event"] == "boot" && e["kind"] == "mac-mismatch"));
    let next = v["next"].as_u64().unwrap();
    let later =
        call("GET", &f.url(&format!("/events?since={next}")), Some(READ_TOKEN), None).json();
    assert_eq!(later["events"].as_array().unwrap().len(), 0);
    let log = audit_log(&f.dir.path().join("state"));
    assert!(!log.contains(REIMAGE_TOKEN) && !log.contains(READ_TOKEN));
    assert_eq!(call("GET", &f.url("/events?since=x"), Some(READ_TOKEN), None).status, 400);

    // Metrics count what happened.
    let m = call("GET", &f.url("/metrics"), None, None);
    assert!(m.body.contains("bootforge_installs_done_total 1"), "{}", m.body);
    assert!(m.body.contains("bootforge_flags_set_total 2"));
    assert!(m
        .body
        .contains("bootforge_boot_answers_total{answer=\"local\",reason=\"mac-mismatch\"}"));
    let h = call("GET", &f.url("/healthz"), None, None);
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    f.stop();
}

#[test]
fn roles_and_api_errors() {
    let mut f = start(false);
    let put = |tok: Option<&str>, host: &str, body: Option<&str>| {
        call("PUT", &f.url(&format!("/hosts/{host}/reimage")), tok, body)
    };
    assert_eq!(put(None, "node01", None).status, 401);
    assert_eq!(put(Some("wrong"), "node01", None).status, 401);
    let r = put(Some(READ_TOKEN), "node01", None);
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("role read"));
    assert_eq!(put(Some(ADMIN_TOKEN), "node01", None).status, 200, "admin includes reimage");
    assert_eq!(call("GET", &f.url("/hosts"), None, None).status, 401);
    let all = call("GET", &f.url("/hosts"), Some(READ_TOKEN), None);
    assert_eq!(all.json()["hosts"].as_array().unwrap().len(), 7);
    let flagged = call("GET", &f.url("/hosts?flagged=1"), Some(READ_TOKEN), None).json();
    assert_eq!(flagged["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(call("GET", &f.url("/events"), None, None).status, 401);
    // Profile rules: node02 has no profile column → 400 naming the fix; explicit profile works;
    // unknown profile → 400; bad JSON → 400; unknown host → 404; invalid host → 400.
    let r = put(Some(REIMAGE_TOKEN), "node02", None);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("profile"), "{}", r.body);
    let r = put(Some(REIMAGE_TOKEN), "node02", Some(r#"{"profile":"rocky"}"#));
    assert_eq!((r.status, r.json()["profile"].as_str()), (200, Some("rocky")));
    let r = put(Some(REIMAGE_TOKEN), "node02", Some(r#"{"profile":"windows"}"#));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown profile"));
    assert_eq!(put(Some(REIMAGE_TOKEN), "node02", Some("{nope")).status, 400);
    assert_eq!(put(Some(REIMAGE_TOKEN), "ghost", None).status, 404);
    assert_eq!(put(Some(REIMAGE_TOKEN), "bad_name", None).status, 400);
    // Methods, paths, bodies.
    let r = call("POST", &f.url("/boot/node01"), None, None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    assert_eq!(call("PATCH", &f.url("/hosts/node01/reimage"), Some(ADMIN_TOKEN), None).status, 405);
    assert_eq!(call("GET", &f.url("/nowhere"), None, None).status, 404);
    assert_eq!(call("GET", &f.url("/hosts/ghost"), Some(READ_TOKEN), None).status, 404);
    let big = "x".repeat(100_000);
    assert_eq!(put(Some(REIMAGE_TOKEN), "node01", Some(&big)).status, 413);
    // Admin-only reload.
    assert_eq!(call("POST", &f.url("/admin/reload"), Some(REIMAGE_TOKEN), None).status, 403);
    assert_eq!(call("POST", &f.url("/admin/reload"), Some(ADMIN_TOKEN), None).status, 200);
    // Denials are audited.
    let ev = call("GET", &f.url("/events?limit=10000"), Some(READ_TOKEN), None).json();
    let denied = ev["events"].as_array().unwrap().iter().filter(|e| e["event"] == "denied").count();
    assert!(denied >= 5, "{denied}");
    // Still serving after all that.
    assert_eq!(call("GET", &f.url("/healthz"), None, None).status, 200);
    f.stop();
}

#[test]
fn without_tokens_file_the_api_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path());
    let mut f = start_with(dir, config);
    let r = call("PUT", &f.url("/hosts/node01/reimage"), Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("--tokens-file"));
    assert_eq!(call("GET", &f.url("/hosts"), Some(ADMIN_TOKEN), None).status, 401);
    assert_eq!(call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).status, 200);
    f.stop();
}

#[test]
fn node_tokens_guard_boot_config_and_callbacks() {
    let mut f = start(true);
    let secret = bootforge::token::Secret::new(SECRET.to_vec()).unwrap();
    let tok = secret.node_token("node01");
    let b = f.base.clone();
    call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    // Missing or wrong token: local boot, never the installer.
    let r = call("GET", &boot_url(&b, "node01", MAC1, ""), None, None);
    assert!(is_local(&r.body) && r.body.contains("node token"), "{}", r.body);
    let wrong = secret.node_token("node02");
    assert!(is_local(
        &call("GET", &boot_url(&b, "node01", MAC1, &format!("&token={wrong}")), None, None).body
    ));
    let chain = call("GET", &boot_url(&b, "node01", MAC1, &format!("&token={tok}")), None, None);
    assert!(chain.body.contains("install chain"), "{}", chain.body);
    assert!(chain.body.contains(&format!("token={tok}")), "URLs carry the node token");
    let id = install_id(&chain.body);
    assert_eq!(call("GET", &f.url("/config/node01/install.cfg"), None, None).status, 403);
    assert_eq!(
        call("GET", &f.url(&format!("/config/node01/install.cfg?token={wrong}")), None, None)
            .status,
        403
    );
    assert_eq!(
        call("GET", &f.url(&format!("/config/node01/install.cfg?token={tok}")), None, None).status,
        200
    );
    assert_eq!(
        call("GET", &f.url(&format!("/config/node01/~{tok}/install.cfg")), None, None).status,
        200
    );
    assert_eq!(
        call("POST", &f.url(&format!("/hosts/node01/done?install={id}")), None, None).status,
        403
    );
    assert_eq!(
        call("POST", &f.url(&format!("/hosts/node01/done?install={id}&token={tok}")), None, None)
            .status,
        200
    );
    let log = audit_log(&f.dir.path().join("state"));
    assert!(!log.contains(&tok), "the node token must not reach the audit log");
    f.stop();
}

/// The installer's own reports: `started` shows it runs, `failed?reason=` shows why it stopped
/// (cleaned to one bounded printable line), the retry's answer shows `installing` again; both are
/// audited, only the open install's id counts, and `HEAD` never reports.
#[test]
fn installer_reports_started_and_failure_reasons() {
    let mut f = start(false);
    call("PUT", &f.url("/hosts/node01/reimage"), Some(REIMAGE_TOKEN), None);
    let id = install_id(&call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None).body);
    let phase = |f: &Fixture| {
        let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
        h["phase"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(phase(&f), "installing");
    let started = f.url(&format!("/hosts/node01/started?install={id}"));
    assert_eq!(call("HEAD", &started, None, None).status, 405);
    let other = f.url(&format!("/hosts/node01/started?install={}", "0".repeat(32)));
    assert_eq!(call("POST", &other, None, None).status, 409);
    assert_eq!(phase(&f), "installing", "a wrong id changes nothing");
    let r = call("GET", &started, None, None);
    assert_eq!((r.status, r.json()["result"].as_str()), (200, Some("started")), "{}", r.body);
    assert_eq!(r.json()["flagged"], true);
    assert_eq!(phase(&f), "started");

    // A reason with a line break, a control character, a tab and 300 more characters.
    let raw = format!("choose-mirror:%20Bad%20archive%20mirror%0A%1B[31m%09{}", "x".repeat(300));
    let r = call(
        "POST",
        &f.url(&format!("/hosts/node01/failed?install={id}&reason={raw}")),
        None,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let h = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(h["phase"], "failed");
    let reason = h["flag"]["install"]["last_failure_reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("choose-mirror: Bad archive mirror [31m xxx"), "{reason}");
    assert_eq!(reason.chars().count(), 201, "200 characters and an ellipsis: {reason}");
    assert!(h["flag"]["install"]["started_at"].as_str().unwrap().ends_with('Z'));
    let events = call("GET", &f.url("/events?since=0"), Some(READ_TOKEN), None).json();
    let events = events["events"].as_array().unwrap().clone();
    let find = |kind: &str| events.iter().find(|e| e["event"] == kind).cloned();
    assert_eq!(find("started").unwrap()["install"], id.as_str());
    assert_eq!(find("failed").unwrap()["reason"], reason.as_str());

    // The retry: its answer shows installing, its installer started again.
    call("GET", &boot_url(&f.base, "node01", MAC1, ""), None, None);
    assert_eq!(phase(&f), "installing");
    call("POST", &started, None, None);
    assert_eq!(phase(&f), "started");
    call("POST", &f.url(&format!("/hosts/node01/done?install={id}")), None, None);
    assert_eq!(phase(&f), "done");
    assert_eq!(call("POST", &started, None, None).status, 409, "no install is open");
    f.stop();
}

#[test]
fn every_example_profile_renders() {
    let mut f = start(false);
    let cases = [
        (
            "hv1",
            "aa:bb:cc:dd:ee:21",
            "harvester",
            vec!["config-create.yaml", "restore-boot-order.sh"],
        ),
        ("hv2", "aa:bb:cc:dd:ee:22", "harvester", vec!["config-join.yaml"]),
        ("rocky1", "aa:bb:cc:dd:ee:31", "rocky", vec!["ks.cfg"]),
        ("ubu1", "aa:bb:cc:dd:ee:41", "ubuntu", vec!["user-data", "meta-data"]),
        ("deb1", "aa:bb:cc:dd:ee:51", "debian", vec!["preseed.cfg"]),
    ];
    for (host, mac, profile, files) in cases {
        let r = call("PUT", &f.url(&format!("/hosts/{host}/reimage")), Some(REIMAGE_TOKEN), None);
        assert_eq!((r.status, r.json()["profile"].as_str()), (200, Some(profile)), "{}", r.body);
        let chain = call("GET", &boot_url(&f.base, host, mac, ""), None, None);
        assert!(chain.body.starts_with("#!ipxe\n"), "{host}: {}", chain.body);
        assert!(
            chain.body.contains("kernel ") && chain.body.contains("initrd "),
            "{host}: {}",
            chain.body
        );
        assert!(!chain.body.contains("{{"), "{host}: unrendered template");
        let id = install_id(&chain.body);
        for file in files {
            let r = call("GET", &f.url(&format!("/config/{host}/{file}")), None, None);
            assert_eq!(r.status, 200, "{host} {file}: {}", r.body);
            assert!(!r.body.contains("{{") && !r.body.contains("{%"), "{host} {file}");
            let b = &r.body;
            match file {
                "config-create.yaml" => {
                    for want in [
                        "scheme_version: 1",
                        "mode: create",
                        "method: static",
                        "ip: 10.0.0.21",
                        "subnet_mask: 255.255.255.0",
                        "gateway: 10.0.0.1",
                        "device: \"/dev/sda\"",
                        "vip: \"10.0.0.20\"",
                        "hostname: hv1",
                        "token: \"tok-123\"",
                    ] {
                        assert!(b.contains(want), "{file} lacks {want}:\n{b}");
                    }
                    assert!(b.contains(&format!("install={id}")), "done callback in webhooks");
                }
                "config-join.yaml" => {
                    for want in [
                        "mode: join",
                        "server_url: \"https://10.0.0.20:443\"",
                        "device: \"/dev/nvme0n1\"",
                        "ip: 10.0.0.22",
                    ] {
                        assert!(b.contains(want), "{file} lacks {want}:\n{b}");
                    }
                }
                "ks.cfg" => {
                    assert!(b.contains("network --bootproto=static --device=eno1 --ip=10.0.0.31 --netmask=255.255.255.0 --gateway=10.0.0.1"), "{b}");
                    assert!(b.contains(&format!("/hosts/rocky1/done?install={id}")), "{b}");
                    assert!(b.contains("restore-boot-order.sh"));
                }
                "user-data" => {
                    assert!(
                        b.contains("addresses: [10.0.0.41/24]") && b.contains("late-commands"),
                        "{b}"
                    );
                    assert!(b.contains(&format!("/hosts/ubu1/done?install={id}")));
                }
                "preseed.cfg" => {
                    assert!(b.contains("d-i netcfg/get_ipaddress string 10.0.0.51"), "{b}");
                    assert!(b.contains(&format!("/hosts/deb1/done?install={id}")));
                }
                _ => {}
            }
        }
        match profile {
            "harvester" | "rocky" => assert!(
                chain.body.contains(&format!(
                    "ip={}::10.0.0.1:255.255.255.0:{host}:eno1:none",
                    r#ip(host)
                )) && chain.body.contains("nameserver=10.0.0.1"),
                "{}",
                chain.body
            ),
            "debian" => assert!(chain
                .body
                .contains("netcfg/disable_autoconfig=true netcfg/get_ipaddress=10.0.0.51")),
            _ => {}
        }
    }
    f.stop();
}

fn r#ip(host: &str) -> &'static str {
    match host {
        "hv1" => "10.0.0.21",
        "hv2" => "10.0.0.22",
        _ => "10.0.0.31",
    }
}

#[test]
fn assets_ranges_and_traversal() {
    let mut f = start(false);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let url = f.url("/assets/rocky/vmlinuz");
    let full = call("GET", &url, None, None);
    assert_eq!((full.status, full.header("content-length")), (200, Some("100000")));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert!(full.header("transfer-encoding").is_none(), "Content-Length, not chunked");
    let part = call_h("GET", &url, None, None, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(part.body.as_bytes(), &data[10..20]);
    let suffix = call_h("GET", &url, None, None, &[("Range", "bytes=-5")]);
    assert_eq!((suffix.status, suffix.body.as_bytes()), (206, &data[99_995..]));
    let open = call_h("GET", &url, None, None, &[("Range", "bytes=99998-")]);
    assert_eq!(open.header("content-range"), Some("bytes 99998-99999/100000"));
    let bad = call_h("GET", &url, None, None, &[("Range", "bytes=200000-")]);
    assert_eq!((bad.status, bad.header("content-range")), (416, Some("bytes */100000")));
    let head = call("HEAD", &url, None, None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    std::fs::write(f.dir.path().join("secret.txt"), "no").unwrap();
    std::os::unix::fs::symlink(f.dir.path().join("secret.txt"), f.dir.path().join("assets/link"))
        .unwrap();
    assert_eq!(call("GET", &f.url("/assets/link"), None, None).status, 404);
    assert!(matches!(
        call("GET", &f.url("/assets/%2e%2e/secret.txt"), None, None).status,
        400 | 404
    ));
    assert!(matches!(
        call("GET", &f.url("/assets/rocky/..%2f..%2fsecret.txt"), None, None).status,
        400 | 404
    ));
    assert_eq!(call("GET", &f.url("/assets/missing"), None, None).status, 404);
    assert_eq!(call("DELETE", &url, None, None).status, 405);
    f.stop();
}

#[test]
fn reload_picks_up_changes_and_keeps_old_on_error() {
    let mut f = start(false);
    let inv = f.config.inventory.clone().unwrap();
    let gen = |f: &Fixture| {
        call("GET", &f.url("/healthz"), None, None).json()["generation"].as_u64().unwrap()
    };
    let g0 = gen(&f);
    std::fs::write(
        &inv,
        format!(
            "{INVENTORY}node09,10.0.0.19/24,10.0.0.1,10.0.0.1,aa:bb:cc:dd:ee:09,e2e,,,,,,,,,\n"
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gen(&f) == g0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(gen(&f), g0 + 1);
    assert_eq!(call("PUT", &f.url("/hosts/node09/reimage"), Some(REIMAGE_TOKEN), None).status, 200);
    // A broken file is refused; the old inventory stays in use and the error is visible.
    std::fs::write(&inv, "hostname,ip\nbroken,not-an-ip\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let h = call("GET", &f.url("/status"), Some(READ_TOKEN), None).json();
    assert_eq!(h["generation"].as_u64(), Some(g0 + 1));
    assert!(h["reload"]["last_error"].as_str().unwrap().contains("not-an-ip"), "{h}");
    assert_eq!(call("GET", &f.url("/hosts/node09"), Some(READ_TOKEN), None).status, 200);
    f.stop();
}

#[test]
fn template_errors_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path());
    // Over TLS, with a good certificate: the template is still what is reported.
    let _ca =
        running_over_tls().then(|| tls_config(&mut config, &pki::LeafSpec::server("IP:127.0.0.1")));
    std::fs::write(config.profiles.join("e2e/config/install.cfg"), "line one\n{{ node.hostname \n")
        .unwrap();
    let err = match bootforge::serve::Server::start(config) {
        Ok(_) => panic!("a broken template must stop the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("e2e/config/install.cfg:2"), "{err}");
}

/// `bootforge reimage` (the binary) flags and cancels through the API, reports per host, and
/// fails, naming the host, on a token without the reimage role.
#[test]
fn reimage_client_flags_and_cancels() {
    let f = start(false);
    let token = f.dir.path().join("token");
    std::fs::write(&token, format!("{REIMAGE_TOKEN}\n")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bootforge"))
            .arg("reimage")
            .args(args)
            .args(["--server", &f.base, "--token-file"])
            .arg(&token)
            .args(
                f.config
                    .tls_ca
                    .iter()
                    .flat_map(|ca| [std::ffi::OsStr::new("--ca-file"), ca.as_os_str()]),
            )
            .output()
            .unwrap()
    };
    let out = run(&["node01", "rocky1", "--profile", "e2e"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node01: flagged for reimage with profile e2e"), "{text}");
    let view = call("GET", &f.url("/hosts/rocky1"), Some(READ_TOKEN), None).json();
    assert_eq!(view["flagged"], true);
    assert_eq!(view["profile"], "e2e");

    let out = run(&["--cancel", "node01"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("node01: reimage cancelled"));
    let view = call("GET", &f.url("/hosts/node01"), Some(READ_TOKEN), None).json();
    assert_eq!(view["flagged"], false);

    std::fs::write(&token, READ_TOKEN).unwrap();
    let out = run(&["node02"]);
    assert!(!out.status.success(), "a read token cannot flag");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node02: HTTP 403") && err.contains("failed for: node02"), "{err}");
}

/// `Server::run` serves on a listener its caller bound (the shape tests and embedders use to pick
/// the socket), exactly as `Server::start` does on the one it binds.
#[test]
fn a_server_runs_on_a_listener_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = bootforge::serve::Server::run(listener, config).expect("server runs");
    assert_eq!(server.local_addr(), addr);
    let resp = call("GET", &format!("http://{addr}/healthz"), None, None);
    assert_eq!(resp.status, 200);
    server.shutdown();
}

/// Every test above again, with the service behind its own TLS listener (a private CA, an
/// RSA certificate for 127.0.0.1) and every request over https:// (`support::over_tls`).
mod over_tls {
    use super::support::over_tls;

    #[test]
    fn boot_is_local_unless_flagged_and_flag_cycle_works() {
        over_tls(super::boot_is_local_unless_flagged_and_flag_cycle_works);
    }

    #[test]
    fn roles_and_api_errors() {
        over_tls(super::roles_and_api_errors);
    }

    #[test]
    fn without_tokens_file_the_api_refuses_everything() {
        over_tls(super::without_tokens_file_the_api_refuses_everything);
    }

    #[test]
    fn node_tokens_guard_boot_config_and_callbacks() {
        over_tls(super::node_tokens_guard_boot_config_and_callbacks);
    }

    #[test]
    fn installer_reports_started_and_failure_reasons() {
        over_tls(super::installer_reports_started_and_failure_reasons);
    }

    #[test]
    fn every_example_profile_renders() {
        over_tls(super::every_example_profile_renders);
    }

    #[test]
    fn assets_ranges_and_traversal() {
        over_tls(super::assets_ranges_and_traversal);
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_old_on_error() {
        over_tls(super::reload_picks_up_changes_and_keeps_old_on_error);
    }

    #[test]
    fn template_errors_are_reported_with_file_and_line() {
        over_tls(super::template_errors_are_reported_with_file_and_line);
    }

    #[test]
    fn reimage_client_flags_and_cancels() {
        over_tls(super::reimage_client_flags_and_cancels);
    }
}
