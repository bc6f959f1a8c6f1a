// bootforge console: vanilla JavaScript over the service's JSON API.
// Every value from the API is put into the page with textContent (never as HTML). The session
// cookie is HttpOnly; the CSRF token lives in this closure only and is sent as X-CSRF-Token on
// every request that changes something.
"use strict";
(() => {
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
    return e;
  };
  const ROLES = { read: 0, reimage: 1, admin: 2 };
  let me = null; // {name, role, via, csrf}
  const fleet = { offset: 0, sort: "hostname", order: "asc", selected: new Set(), timer: null, hosts: [] };
  let audit = { before: null, pages: [] };

  async function api(method, path, body, raw) {
    const headers = {};
    if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf;
    let payload;
    if (body !== undefined) {
      payload = raw ? body : JSON.stringify(body);
      headers["Content-Type"] = raw ? "text/csv" : "application/json";
    }
    const r = await fetch(path, { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401 && me && path !== "/session") { showLogin("Your session has ended: log in again."); }
    return { status: r.status, ok: r.ok, data: data || {} };
  }
  const can = (role) => me && ROLES[me.role] >= ROLES[role];
  const ago = (iso) => {
    if (!iso) return "";
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  };

  // ---------------------------------------------------------------- login
  function showLogin(message) {
    me = null;
    clearInterval(fleet.timer);
    $("#nav").hidden = true; $("#who").hidden = true;
    show("login");
    $("#login-error").textContent = message || "";
  }
  async function start() {
    const r = await api("GET", "/session");
    $("#login-ldap-form").hidden = !r.data.ldap;
    if (r.ok) { loggedIn(r.data); } else { showLogin(""); }
  }
  function loggedIn(who) {
    me = who;
    $("#whoami").textContent = `${who.name} (${who.role}${who.via === "ldap-session" ? ", directory" : ""})`;
    $("#nav").hidden = false; $("#who").hidden = false;
    for (const e of document.querySelectorAll("[data-role]")) e.hidden = !can(e.dataset.role);
    $("#password").value = ""; $("#token").value = "";
    route();
  }
  async function login(body) {
    $("#login-error").textContent = "";
    const r = await api("POST", "/session", body);
    if (r.ok) { loggedIn(r.data); } else { $("#login-error").textContent = r.data.error || "login refused"; }
  }
  $("#login-token-form").addEventListener("submit", (ev) => { ev.preventDefault(); login({ token: $("#token").value }); });
  $("#login-ldap-form").addEventListener("submit", (ev) => {
    ev.preventDefault(); login({ username: $("#username").value, password: $("#password").value });
  });
  $("#logout").addEventListener("click", async () => { await api("DELETE", "/session"); showLogin("Logged out."); });

  // ---------------------------------------------------------------- views
  function show(view) {
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + view;
    for (const b of document.querySelectorAll("#nav button")) b.classList.toggle("active", b.dataset.view === view);
    clearInterval(fleet.timer);
    // The host page is the only view with an address of its own; leaving it drops the hash.
    if (view !== "host" && hostFromHash() !== null) history.replaceState(null, "", location.pathname + location.search);
    if (view === "host") { loadHost(); fleet.timer = setInterval(loadHost, 3000); }
    if (view === "fleet") { stats.at = 0; loadFleet(); fleet.timer = setInterval(loadFleet, 2000); }
    if (view === "audit") { audit = { before: null, pages: [] }; loadAudit(); }
    if (view === "status") loadStatus();
    if (view === "inventory") loadInventory();
  }
  for (const b of document.querySelectorAll("#nav button")) b.addEventListener("click", () => show(b.dataset.view));

  // ---------------------------------------------------------------- fleet
  function fleetQuery() {
    const p = new URLSearchParams({
      phase: $("#f-phase").value, profile: $("#f-profile").value, q: $("#f-q").value.trim(),
      sort: fleet.sort, order: fleet.order, offset: fleet.offset, limit: $("#page-size").value,
    });
    return "/hosts?" + p.toString();
  }
  let loading = false;
  async function loadFleet() {
    if (loading || !me) return;
    loading = true;
    try {
      const r = await api("GET", fleetQuery());
      if (r.ok) {
        renderFleet(r.data);
        // A host changed phase: the figures are out of date now, not in 10 s.
        const phases = JSON.stringify(r.data.phases);
        if (phases !== stats.phases) { stats.phases = phases; stats.at = 0; }
      }
      if (Date.now() - stats.at > 10000) await loadStats();
    } finally { loading = false; }
  }
  function fillProfiles(select, names, keepFirst) {
    const have = [...select.options].slice(keepFirst).map((o) => o.value).join(",");
    if (have === names.join(",")) return;
    const value = select.value;
    while (select.options.length > keepFirst) select.remove(keepFirst);
    for (const n of names) select.append(el("option", { value: n, textContent: n }));
    select.value = value;
  }
  function renderFleet(d) {
    fillProfiles($("#f-profile"), d.profiles, 1);
    fillProfiles($("#sel-profile"), d.profiles, 1);
    const counts = $("#counts"); counts.textContent = "";
    counts.append(el("span", {}, `${d.total} hosts`));
    for (const [phase, n] of Object.entries(d.phases)) counts.append(el("span", {}, `${phase}: ${n}`));
    fleet.hosts = d.hosts;
    const body = $("#hosts tbody");
    body.textContent = "";
    for (const h of d.hosts) body.append(hostRow(h));
    const last = Math.min(d.offset + d.hosts.length, d.matched);
    $("#page-info").textContent = d.matched ? `${d.offset + 1}–${last} of ${d.matched}` : "no host matches";
    $("#prev").disabled = d.offset === 0;
    $("#next").disabled = last >= d.matched;
    for (const th of document.querySelectorAll("#hosts th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === fleet.sort);
      th.classList.toggle("desc", fleet.order === "desc");
    }
    updateSelection();
  }
  function hostRow(h) {
    const tr = el("tr");
    tr.dataset.host = h.hostname;
    if (can("reimage")) {
      const box = el("input", { type: "checkbox", className: "sel", checked: fleet.selected.has(h.hostname) });
      box.setAttribute("aria-label", "select " + h.hostname);
      box.addEventListener("change", () => {
        if (box.checked) fleet.selected.add(h.hostname); else fleet.selected.delete(h.hostname);
        updateSelection();
      });
      tr.append(el("td", {}, box));
    }
    const phase = h.phase || (h.state_error ? "error" : "");
    const profile = h.profile || h.default_profile || "";
    const lb = h.last_boot;
    const boot = lb ? el("td", { title: lb.time }, ago(lb.time),
      el("small", {}, `from ${lb.peer}: ${lb.answer}`), el("small", {}, lb.reason)) : el("td", {}, "—");
    const inst = h.flag ? el("td", { className: "mono", title: h.flag.install.id },
      h.flag.install.id.slice(0, 8), el("small", {}, `flagged ${ago(h.flag.set_at)} by ${h.flag.set_by}`))
      : el("td", {}, h.last_install ? el("small", {}, `last: ${h.last_install.how} ${ago(h.last_install.ended_at)}`) : "—");
    const failure = h.flag && h.flag.install.last_failure_reason;
    tr.append(
      el("td", {}, el("a", { className: "host-link", href: hostHash(h.hostname), textContent: h.hostname })),
      el("td", { className: "mono" }, h.ip || ""),
      el("td", { className: "mono" }, h.mac || ""),
      el("td", {}, h.vlan == null ? "" : h.vlan),
      el("td", {}, profile),
      el("td", {}, el("span", { className: "phase phase-" + phase }, phase), stalledBadge(h), failure ? el("small", {}, failure) : ""),
      boot, inst, hardwareCell(h.hardware),
    );
    if (can("reimage")) {
      const acts = el("div", { className: "row-actions" });
      const btn = (cls, text, fn) => { const b = el("button", { className: cls, textContent: text }); b.addEventListener("click", fn); acts.append(b); };
      if (retryable(h)) btn("retry", "Retry", () => confirmRetry(h.hostname));
      if (h.flagged) btn("cancel danger", "Cancel", () => confirmFlag([h.hostname], false));
      else btn("reimage", "Reimage", () => confirmFlag([h.hostname], true));
      btn("download", "ISO", () => download(h.hostname, "iso"));
      btn("download-usb", "USB", () => download(h.hostname, "usb"));
      btn("download-efi", "EFI", () => download(h.hostname, "efi"));
      if (h.bmc) {
        btn("media-attach", "Attach", () => bmcMedia(h.hostname, "PUT"));
        btn("media-detach", "Detach", () => bmcMedia(h.hostname, "DELETE"));
        btn("power", "Power…", () => bmcPower(h.hostname));
      }
      tr.append(el("td", {}, acts));
    }
    return tr;
  }
  function updateSelection() {
    const n = fleet.selected.size;
    $("#sel-count").textContent = `${n} selected`;
    $("#sel-reimage").disabled = n === 0;
    $("#sel-cancel").disabled = n === 0;
  }
  const refilter = () => { fleet.offset = 0; loadFleet(); };
  for (const id of ["#f-phase", "#f-profile", "#page-size"]) $(id).addEventListener("change", refilter);
  let typing;
  $("#f-q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  $("#prev").addEventListener("click", () => { fleet.offset = Math.max(0, fleet.offset - +$("#page-size").value); loadFleet(); });
  $("#next").addEventListener("click", () => { fleet.offset += +$("#page-size").value; loadFleet(); });
  for (const th of document.querySelectorAll("#hosts th[data-sort]")) {
    th.addEventListener("click", () => {
      if (fleet.sort === th.dataset.sort) fleet.order = fleet.order === "asc" ? "desc" : "asc";
      else { fleet.sort = th.dataset.sort; fleet.order = "asc"; }
      loadFleet();
    });
  }
  $("#sel-all").addEventListener("change", () => {
    for (const h of fleet.hosts) { if ($("#sel-all").checked) fleet.selected.add(h.hostname); else fleet.selected.delete(h.hostname); }
    loadFleet();
  });
  $("#sel-reimage").addEventListener("click", () => confirmFlag([...fleet.selected], true));
  $("#sel-cancel").addEventListener("click", () => confirmFlag([...fleet.selected], false));

  function confirmFlag(hosts, flag) {
    const profile = $("#sel-profile").value;
    const what = flag ? `Flag ${hosts.length} host(s) for reimage${profile ? " with profile " + profile : ""}? Their next boot installs.`
      : `Cancel the reimage flag of ${hosts.length} host(s)? Their next boot is local.`;
    ask(what, hosts, async () => {
      const results = [];
      for (const h of hosts) {
        const path = `/hosts/${encodeURIComponent(h)}/reimage`;
        const r = flag ? await api("PUT", path, profile ? { profile } : undefined) : await api("DELETE", path);
        results.push(r.ok ? `${h}: ${flag ? "flagged" : r.data.outcome}` : `${h}: ${r.data.error}`);
      }
      fleet.selected.clear();
      $("#fleet-msg").textContent = results.join("; ");
      stats.at = 0; // the figures count this change at once
      loadFleet();
    });
  }
  // The hardware column: the refresher's last read of the host's BMC (null: no bmc).
  function hardwareCell(hw) {
    if (!hw) return el("td", { className: "hw" }, "—");
    const td = el("td", { className: "hw" + (hw.stale ? " stale" : "") });
    td.append(el("span", { className: "dot power-" + hw.power, title: "power " + hw.power }), " ", hw.power);
    td.append(el("small", { className: "health-" + hw.health }, "health " + hw.health));
    const medium = { ours: "our medium", other: "other medium", none: "no medium", unknown: "medium ?" }[hw.medium] || "medium ?";
    const bo = hw.boot_override;
    const override = bo && bo.enabled !== "disabled" ? `, boot ${bo.target} (${bo.enabled})` : "";
    td.append(el("small", { className: "medium-" + hw.medium }, medium + override));
    const when = hw.checked_ms ? ago(new Date(hw.checked_ms).toISOString()) : "never read";
    td.append(el("small", {}, hw.error ? `${hw.error}; ${when}` : when));
    return td;
  }
  async function bmcPower(host) {
    $("#power-action").value = "on";
    ask("Send a power action to this host's BMC?", [host], async () => {
      const action = $("#power-action").value;
      $("#fleet-msg").textContent = `${host}: asking its BMC…`;
      const r = await api("POST", `/hosts/${encodeURIComponent(host)}/power`, { action });
      $("#fleet-msg").textContent = r.ok ? `${host}: ${action} sent (${r.data.reset_type})`
        : `${host}: failed: ${r.data.error || "HTTP " + r.status}`;
      loadFleet();
    }, false, true);
  }
  function ask(text, hosts, action, attach, power) {
    $("#power-options").hidden = !power;
    $("#attach-options").hidden = !attach;
    $("#confirm-text").textContent = text;
    const list = $("#confirm-hosts"); list.textContent = "";
    for (const h of hosts) list.append(el("li", {}, h));
    $("#confirm").hidden = false;
    $("#confirm-ok").onclick = () => { $("#confirm").hidden = true; action(); };
    $("#confirm-cancel").onclick = () => { $("#confirm").hidden = true; };
  }
  async function download(host, format) {
    // A short-lived signed URL, fetched by the browser's download machinery: the page never
    // shows it, and the URL dies ten minutes after.
    const r = await api("POST", `/hosts/${encodeURIComponent(host)}/media-url`, { format, ttl: 600 });
    if (!r.ok) { $("#fleet-msg").textContent = `${host}: ${r.data.error}`; return; }
    const a = el("a", { href: new URL(r.data.url).pathname + new URL(r.data.url).search, download: "" });
    a.rel = "noreferrer"; document.body.append(a); a.click(); a.remove();
    $("#fleet-msg").textContent = `${host}: downloading its ${format} image (${Math.round(r.data.size / 1048576)} MiB)`;
  }
  async function bmcMedia(host, method) {
    const attach = method === "PUT";
    const verb = attach ? "attach its ISO to the virtual CD of" : "eject the virtual CD of";
    if (attach) { $("#attach-boot").value = "continuous"; $("#attach-reset").checked = false; }
    ask(`Tell the BMC to ${verb} this host?`, [host], async () => {
      const body = attach ? { boot: $("#attach-boot").value, reset: $("#attach-reset").checked } : undefined;
      $("#fleet-msg").textContent = `${host}: asking its BMC…`;
      const r = await api(method, `/hosts/${encodeURIComponent(host)}/media`, body);
      $("#fleet-msg").textContent = r.ok ? mediaDone(host, r.data) : `${host}: failed: ${r.data.error || "HTTP " + r.status}`;
    }, attach);
  }
  // The same words as `bootforge attach` and `detach` print.
  function mediaDone(host, d) {
    const rep = d.report || {};
    if (d.action === "detach") return `${host}: ${rep.ejected ? "ejected" : "nothing was mounted"}`;
    const boot = rep.boot_override ? `boots from CD: ${rep.boot_override}` : "boot override untouched";
    const reset = rep.reset ? `, reset (${rep.reset})` : "";
    return `${host}: ISO attached, ${boot}${reset}; URL valid until ${d.url_expires_at}`;
  }

  // ---------------------------------------------------------------- host page
  // `#host/NAME` is the host page's address, so it can be linked and reloaded. Everything the
  // timeline holds came from nodes and installers (file names, failure reasons): it goes into
  // the page as text only, like every other value.
  const hostPage = { name: null, loading: false };
  const hostHash = (name) => "#host/" + encodeURIComponent(name);
  function hostFromHash() {
    const m = /^#host\/(.+)$/.exec(location.hash);
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (_) { return null; }
  }
  function route() {
    if (!me) return;
    const name = hostFromHash();
    if (name !== null) { hostPage.name = name; show("host"); }
    else if (!$("#view-host").hidden || $("#view-login").hidden === false) show("fleet");
  }
  window.addEventListener("hashchange", route);
  $("#host-back").addEventListener("click", (ev) => { ev.preventDefault(); show("fleet"); });

  const stalledBadge = (h) => h.stalled ? el("span", { className: "badge badge-stalled", title: stalledTitle(h) }, "stalled") : "";
  const stalledTitle = (h) => h.stall_after_s ? `no progress for longer than ${fmtDur(h.stall_after_s * 1000)}` : "no progress for too long";
  const retryable = (h) => !!h.flagged && (h.stalled || h.phase === "failed");
  const utc = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  function fmtDur(ms) {
    if (ms == null) return "";
    if (ms < 1000) return ms + " ms";
    if (ms < 90000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 5400000) return Math.round(ms / 60000) + " min";
    return (ms / 3600000).toFixed(1) + " h";
  }
  function fmtBytes(n) {
    if (n == null) return "";
    if (n < 10240) return n + " B";
    if (n < 10485760) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  async function loadHost() {
    const name = hostPage.name;
    if (hostPage.loading || !me || name == null) return;
    hostPage.loading = true;
    try {
      const path = `/hosts/${encodeURIComponent(name)}`;
      const [h, t] = await Promise.all([api("GET", path), api("GET", path + "/timeline")]);
      if (name !== hostPage.name) return;
      $("#host-name").textContent = name;
      $("#host-error").textContent = h.ok ? (t.ok ? "" : `timeline: ${t.data.error || "HTTP " + t.status}`)
        : (h.data.error || "HTTP " + h.status);
      if (h.ok) renderHostFacts(h.data);
      renderInstalls(t.ok ? t.data.installs || [] : []);
    } finally { hostPage.loading = false; }
  }
  function renderHostFacts(h) {
    const phase = h.phase || (h.state_error ? "error" : "");
    const ph = $("#host-phase"); ph.textContent = "";
    ph.append(el("span", { className: "phase phase-" + phase }, phase), stalledBadge(h));
    const retry = $("#host-retry");
    retry.hidden = !(can("reimage") && retryable(h));
    retry.onclick = () => confirmRetry(h.hostname);
    const lb = h.last_boot, f = h.flag, li = h.last_install;
    const rows = [
      ["Address", h.ip || "—"], ["MAC", h.mac || "—"], ["VLAN", h.vlan == null ? "—" : h.vlan],
      ["Profile", h.profile || h.default_profile || "—"],
      ["Phase", phase + (h.stalled ? " (stalled)" : "") + (h.state_error ? `: ${h.state_error}` : "")],
      ["Flag", f ? `install ${f.install.id}, profile ${f.profile}, by ${f.set_by} from ${f.set_from} at ${f.set_at}` : "not flagged"],
      ["Last progress", h.progress_ms ? `${utc(h.progress_ms)} (${fmtDur(Date.now() - h.progress_ms)} ago)` : "—"],
      ["Stalled after", h.stall_after_s ? fmtDur(h.stall_after_s * 1000) + " without progress" : "—"],
      ["Last failure", (f && f.install.last_failure_reason) || "—"],
      ["Last boot", lb ? `${lb.time}: ${lb.answer} (${lb.reason}) from ${lb.peer}` : "—"],
      ["Last install", li ? `${li.id}, ${li.profile}: ${li.how} at ${li.ended_at}` : "—"],
    ];
    const body = $("#host-facts tbody"); body.textContent = "";
    for (const [k, v] of rows) body.append(el("tr", {}, el("th", {}, k), el("td", {}, v)));
  }
  // What a step says beyond its name, as short text parts.
  function stepDetails(s, inst) {
    const d = [];
    switch (s.step) {
      case "flagged":
        d.push(`by ${s.by || "?"}${s.via ? " (" + s.via + ")" : ""}`, `profile ${inst.profile}`);
        if (s.retry) d.push("a retry");
        break;
      case "replaced": d.push("a new flag or a retry replaced this install"); break;
      case "removed": d.push("the host left the inventory"); break;
      case "cancelled": d.push(`by ${s.by || "?"}${s.via ? " (" + s.via + ")" : ""}`); break;
      case "boot": case "next-boot":
        if (s.answer) d.push(`answer: ${s.answer}`);
        if (s.reason) d.push(s.reason);
        if (s.medium) d.push(`medium ${s.medium}`);
        break;
      case "config": case "asset":
        if (s.file) d.push(s.file);
        if (s.status != null) d.push(`HTTP ${s.status}`);
        if (s.bytes != null) d.push(fmtBytes(s.bytes));
        if (s.fetch_ms != null) d.push(`in ${fmtDur(s.fetch_ms)}`);
        if (s.attributed) d.push(`by ${s.attributed}`);
        if (s.complete === false) d.push("cut short");
        break;
      case "failed": d.push(s.failure ? `installer said: ${s.failure}` : "no reason given"); break;
      case "done": if (inst.duration_ms != null) d.push(`install took ${fmtDur(inst.duration_ms)}`); break;
      default: if (s.failure) d.push(s.failure);
    }
    if (s.peer) d.push(`from ${s.peer}`);
    return d;
  }
  function renderInstalls(installs) {
    const box = $("#host-installs"); box.textContent = "";
    if (!installs.length) { box.append(el("p", { className: "msg" }, "No install recorded for this host.")); return; }
    for (const inst of installs) {
      const card = el("div", { className: "card install" + (inst.open ? " open" : "") });
      card.dataset.install = inst.install;
      card.dataset.state = inst.state;
      const head = el("div", { className: "install-head" },
        el("span", { className: "mono install-id", title: inst.install }, inst.install),
        el("span", {}, inst.profile),
        el("span", { className: "phase phase-" + inst.state }, inst.state),
        inst.stalled ? el("span", { className: "badge badge-stalled" }, "stalled") : "",
        inst.open ? el("span", { className: "badge" }, "current") : "",
        inst.duration_ms != null ? el("span", { className: "muted" }, `took ${fmtDur(inst.duration_ms)}`) : "",
        inst.stall_after_s ? el("span", { className: "muted" }, `stalls after ${fmtDur(inst.stall_after_s * 1000)}`) : "");
      const table = el("table", { className: "steps" },
        el("thead", {}, el("tr", {}, el("th", {}, "Time (UTC)"), el("th", {}, "Since previous"), el("th", {}, "Step"), el("th", {}, "Details"))));
      const body = el("tbody");
      for (const s of inst.steps || []) {
        const tr = el("tr", { className: "step step-" + s.step },
          el("td", { className: "mono" }, utc(s.ms)),
          el("td", { className: "since" }, s.since_prev_ms == null ? "" : "+" + fmtDur(s.since_prev_ms)),
          el("td", {}, el("span", { className: "step-name" }, s.step)),
          el("td", { className: "details" }, stepDetails(s, inst).join(" · ")));
        tr.dataset.step = s.step;
        if (s.status != null && s.status >= 400) tr.classList.add("bad");
        body.append(tr);
      }
      if (inst.steps_omitted) {
        body.append(el("tr", { className: "omitted" }, el("td", { colSpan: 4 }, `${inst.steps_omitted} more asset fetches folded away`)));
      }
      table.append(body);
      card.append(head, table);
      box.append(card);
    }
  }

  function confirmRetry(host) {
    ask("Retry the install of this host? It gets a new install id with the same profile; its next boot installs.", [host], async () => {
      const r = await api("POST", `/hosts/${encodeURIComponent(host)}/retry`, {});
      const msg = r.ok ? `${host}: retried, install ${r.data.flag ? r.data.flag.install.id : ""}` : `${host}: ${r.data.error || "HTTP " + r.status}`;
      $("#fleet-msg").textContent = msg; $("#host-msg").textContent = msg;
      stats.at = 0;
      if (!$("#view-host").hidden) loadHost(); else loadFleet();
    });
  }

  // ---------------------------------------------------------------- fleet figures
  const stats = { at: 0 };
  async function loadStats() {
    stats.at = Date.now();
    const r = await api("GET", "/fleet/stats?days=14");
    if (r.ok) renderStats(r.data);
  }
  function renderStats(d) {
    $("#fig-in-progress").textContent = d.in_progress;
    $("#fig-stalled").textContent = d.stalled;
    $("#fig-done-today").textContent = d.today ? d.today.done : "";
    $("#fig-failed-today").textContent = d.today ? d.today.failed : "";
    const body = $("#fig-profiles tbody"); body.textContent = "";
    for (const p of d.profiles || []) {
      const tr = el("tr", {}, el("td", {}, p.profile), el("td", {}, p.done), el("td", {}, p.failed),
        el("td", {}, p.p50_ms == null ? "—" : fmtDur(p.p50_ms)), el("td", {}, p.p95_ms == null ? "—" : fmtDur(p.p95_ms)));
      tr.dataset.profile = p.profile;
      body.append(tr);
    }
    if (!(d.profiles || []).length) body.append(el("tr", {}, el("td", { colSpan: 5, className: "msg" }, "no install ended in this window")));
    drawChart($("#fig-chart"), d.series || []);
  }
  // Installs per day as stacked bars (done below, failed on top), drawn as SVG elements by the
  // page itself: no library, no inline style (the page's CSP), colours from app.css classes.
  function drawChart(box, series) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
      if (text != null) e.textContent = text;
      return e;
    };
    const bw = 22, gap = 6, top = 18, h = 90, left = 28, bottom = 30;
    const width = left + series.length * (bw + gap) + 90, height = top + h + bottom;
    const max = Math.max(1, ...series.map((s) => s.done + s.failed));
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "installs per day, done and failed" });
    root.append(svg("text", { x: 0, y: 12, class: "chart-label" }, "installs per day (UTC)"));
    root.append(svg("text", { x: left - 4, y: top + 4, class: "chart-axis", "text-anchor": "end" }, String(max)));
    root.append(svg("text", { x: left - 4, y: top + h, class: "chart-axis", "text-anchor": "end" }, "0"));
    root.append(svg("line", { x1: left, y1: top + h + 0.5, x2: left + series.length * (bw + gap), y2: top + h + 0.5, class: "chart-base" }));
    series.forEach((s, i) => {
      const x = left + i * (bw + gap) + gap / 2;
      const hd = (s.done / max) * h, hf = (s.failed / max) * h;
      const g = svg("g", { class: "bar" });
      g.dataset.day = s.day;
      g.append(svg("title", {}, `${s.day}: ${s.done} done, ${s.failed} failed`));
      g.append(svg("rect", { x, y: top + h - hd, width: bw, height: hd, class: "bar-done" }));
      g.append(svg("rect", { x, y: top + h - hd - hf, width: bw, height: hf, class: "bar-failed" }));
      const n = s.done + s.failed;
      if (n) g.append(svg("text", { x: x + bw / 2, y: top + h - hd - hf - 3, class: "chart-value", "text-anchor": "middle" }, String(n)));
      if (i === 0 || i === series.length - 1 || i % 7 === 0) {
        g.append(svg("text", { x: x + bw / 2, y: top + h + 14, class: "chart-axis", "text-anchor": "middle" }, s.day.slice(5)));
      }
      root.append(g);
    });
    const lx = left + series.length * (bw + gap) + 10;
    root.append(svg("rect", { x: lx, y: top + 4, width: 10, height: 10, class: "bar-done" }), svg("text", { x: lx + 14, y: top + 13, class: "chart-axis" }, "done"));
    root.append(svg("rect", { x: lx, y: top + 22, width: 10, height: 10, class: "bar-failed" }), svg("text", { x: lx + 14, y: top + 31, class: "chart-axis" }, "failed"));
    box.textContent = "";
    box.append(root);
  }

  // ---------------------------------------------------------------- inventory (admin)
  const inv = { columns: [], rows: [], version: null, editing: null };
  async function loadInventory() {
    const r = await api("GET", "/inventory");
    if (!r.ok) { $("#form-errors").textContent = r.data.error; return; }
    Object.assign(inv, { columns: r.data.columns, rows: r.data.rows, version: r.data.version });
    renderInventory();
  }
  function renderInventory() {
    const body = $("#inv-rows tbody"); body.textContent = "";
    const q = $("#inv-q").value.trim().toLowerCase();
    let shown = 0;
    for (const row of inv.rows) {
      const f = row.fields;
      if (q && !Object.values(f).some((v) => v.toLowerCase().includes(q))) continue;
      if (++shown > 500) break;
      const edit = el("button", { className: "edit", textContent: "Edit" });
      edit.addEventListener("click", () => openForm(f.hostname));
      const remove = el("button", { className: "remove danger", textContent: "Remove" });
      remove.addEventListener("click", () => ask(`Remove this host from the inventory? Its row is deleted from the CSV.`, [f.hostname], () => removeRow(f.hostname)));
      const tr = el("tr", {}, el("td", {}, row.line), el("td", {}, f.hostname), el("td", { className: "mono" }, f.ip), el("td", {}, edit, " ", remove));
      tr.dataset.host = f.hostname;
      body.append(tr);
    }
  }
  $("#inv-q").addEventListener("input", renderInventory);
  function openForm(host) {
    inv.editing = host;
    const row = host ? inv.rows.find((r) => r.fields.hostname === host) : null;
    $("#row-title").textContent = host ? `Change ${host}` : "Add a host";
    const box = $("#row-fields"); box.textContent = "";
    for (const c of inv.columns) {
      const input = el("input", { name: c, value: row ? row.fields[c] || "" : "" });
      input.id = "field-" + c;
      const err = el("span", { className: "field-error" });
      err.dataset.for = c;
      box.append(el("label", {}, c, input, err));
    }
    $("#form-errors").textContent = "";
    $("#row-form").hidden = false;
  }
  $("#row-new").addEventListener("click", () => openForm(null));
  $("#row-close").addEventListener("click", () => { $("#row-form").hidden = true; });
  function showErrors(errors, note) {
    for (const e of document.querySelectorAll("#row-fields .field-error")) e.textContent = "";
    for (const i of document.querySelectorAll("#row-fields input")) i.classList.remove("invalid");
    const general = [];
    for (const e of errors || []) {
      const slot = e.on_row && document.querySelector(`#row-fields .field-error[data-for="${CSS.escape(e.column)}"]`);
      if (slot) { slot.textContent = e.message; $("#field-" + CSS.escape(e.column)).classList.add("invalid"); }
      else general.push(`line ${e.line}, column ${e.column}: ${e.message}`);
    }
    if (note) general.push(note);
    $("#form-errors").textContent = general.join("\n");
  }
  $("#row-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const fields = {};
    for (const i of document.querySelectorAll("#row-fields input")) fields[i.name] = i.value;
    const path = inv.editing ? `/inventory/hosts/${encodeURIComponent(inv.editing)}` : "/inventory/hosts";
    const r = await api(inv.editing ? "PUT" : "POST", path, { fields, version: inv.version });
    if (r.status === 422) { showErrors(r.data.errors, r.data.note); return; }
    if (!r.ok) { $("#form-errors").textContent = r.data.error; return; }
    $("#row-form").hidden = true;
    $("#form-errors").textContent = "";
    await loadInventory();
  });
  async function removeRow(host) {
    const r = await api("DELETE", `/inventory/hosts/${encodeURIComponent(host)}`, { version: inv.version });
    if (!r.ok) { $("#form-errors").textContent = r.status === 422 ? r.data.errors.map((e) => e.message).join("\n") : r.data.error; }
    await loadInventory();
  }
  // The file checked, and the version of the inventory it was checked against: the
  // replacement names that version, so a change made since (a row edit in another tab) is not
  // silently undone (the server answers 409 and nothing is replaced).
  let uploadText = null, uploadVersion = null;
  $("#csv-check").addEventListener("click", async () => {
    const file = $("#csv-file").files[0];
    const out = $("#csv-result"); out.textContent = "";
    $("#csv-replace").disabled = true;
    if (!file) { out.append(el("p", { className: "error" }, "choose a CSV file first")); return; }
    uploadText = await file.text();
    const r = await api("POST", "/inventory/check", uploadText, true);
    uploadVersion = r.data.version || null;
    if (r.ok) {
      out.append(el("p", {}, `${r.data.nodes} hosts; the file is valid.`));
      $("#csv-replace").disabled = !uploadVersion;
    } else if (r.status === 422) {
      const t = el("table", { className: "errors" }, el("tr", {}, el("th", {}, "Line"), el("th", {}, "Column"), el("th", {}, "Error")));
      for (const e of r.data.errors) t.append(el("tr", {}, el("td", {}, e.line), el("td", {}, e.column), el("td", {}, e.message)));
      out.append(el("p", { className: "error" }, `${r.data.total ?? r.data.errors.length} error(s); nothing was replaced.`));
      if (r.data.note) out.append(el("p", { className: "error" }, r.data.note));
      out.append(t);
    } else { out.append(el("p", { className: "error" }, r.data.error)); }
  });
  $("#csv-replace").addEventListener("click", () => ask("Replace the whole inventory with this file?", [], async () => {
    const r = await api("PUT", "/inventory?version=" + encodeURIComponent(uploadVersion), uploadText, true);
    $("#csv-result").textContent = r.ok ? `Replaced: ${r.data.nodes} hosts.` : (r.data.error || "refused");
    $("#csv-replace").disabled = true;
    loadInventory();
  }));

  // ---------------------------------------------------------------- discovery (admin)
  // Every row with a bmc: the proposal first (changes nothing), then Apply writes that proposal
  // against the inventory version it was made from (409 if the inventory moved meanwhile).
  let discovered = null;
  function discoverLines(d) {
    return d.hosts.map((h) => {
      const head = h.error ? `${h.host}: ${h.summary}` : `${h.host}: ${h.old_mac || "(none)"} -> ${h.new_mac || "(none)"} (${h.summary})`;
      return [head, ...(h.notes || []).map((n) => "  " + n)].join("\n");
    }).join("\n");
  }
  $("#discover-run").addEventListener("click", async () => {
    $("#discover-apply").disabled = true;
    $("#discover-result").textContent = "reading the BMCs…";
    const overwrite = $("#discover-overwrite").checked;
    const r = await api("POST", "/discover", { all: true, overwrite });
    if (!r.ok) { $("#discover-result").textContent = r.data.error || "refused"; return; }
    discovered = { version: r.data.version, overwrite };
    const changes = r.data.hosts.filter((h) => h.changes).length;
    $("#discover-result").textContent = discoverLines(r.data) + `\n${changes} host(s) would change; nothing was written`;
    $("#discover-apply").disabled = changes === 0;
  });
  $("#discover-apply").addEventListener("click", async () => {
    if (!discovered) return;
    $("#discover-apply").disabled = true;
    const r = await api("POST", "/discover", { all: true, apply: true, overwrite: discovered.overwrite, version: discovered.version });
    discovered = null;
    if (!r.ok) {
      const errors = (r.data.errors || []).map((e) => `line ${e.line}, column ${e.column}: ${e.message}`);
      $("#discover-result").textContent = [r.data.error || "refused", ...errors].join("\n");
      return;
    }
    const changed = r.data.hosts.filter((h) => h.changes).length;
    $("#discover-result").textContent = discoverLines(r.data) + (r.data.applied ? `\napplied: ${changed} host(s) changed` : "\nnothing to change");
    await loadInventory();
  });

  // ---------------------------------------------------------------- audit
  async function loadAudit() {
    const p = new URLSearchParams({ order: "newest", limit: 100, host: $("#a-host").value.trim(), event: $("#a-event").value, by: $("#a-by").value.trim() });
    if (audit.before != null) p.set("before", audit.before);
    const r = await api("GET", "/events?" + p.toString());
    if (!r.ok) return;
    const body = $("#events tbody"); body.textContent = "";
    for (const e of r.data.events) {
      const details = Object.entries(e).filter(([k]) => !["time", "ms", "event", "host", "by", "name", "offset"].includes(k))
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
      const who = e.by || e.name || "";
      body.append(el("tr", {}, el("td", { title: e.time }, e.time.replace("T", " ").slice(0, 19)), el("td", {}, e.event),
        el("td", {}, e.host || ""), el("td", {}, who + (e.role ? ` (${e.role})` : "")), el("td", { className: "mono" }, details)));
    }
    // The server's cursor: a page may hold fewer records than asked when its scan budget ran
    // out, and still have older ones to page to.
    audit.oldest = r.data.before ?? null;
    $("#a-older").disabled = audit.oldest == null;
    $("#a-newer").disabled = audit.pages.length === 0;
  }
  $("#a-apply").addEventListener("click", () => { audit = { before: null, pages: [] }; loadAudit(); });
  $("#a-older").addEventListener("click", () => { audit.pages.push(audit.before); audit.before = audit.oldest; loadAudit(); });
  $("#a-newer").addEventListener("click", () => { audit.before = audit.pages.pop() ?? null; loadAudit(); });

  // ---------------------------------------------------------------- status
  async function loadStatus() {
    const r = await api("GET", "/status");
    if (!r.ok) return;
    const s = r.data;
    const up = s.uptime_secs;
    const rows = [
      ["Version", s.version], ["Uptime", `${Math.floor(up / 86400)} d ${Math.floor(up / 3600) % 24} h ${Math.floor(up / 60) % 60} min`],
      ["Inventory", `${s.inventory} (${s.nodes} hosts)`], ["Profiles", s.profiles.join(", ")],
      ["Loaded", `generation ${s.generation} at ${s.loaded_at}`],
      ["Last reload error", (s.reload && (s.reload.last_error || s.reload.tokens_error)) || "none"],
      ["Node tokens", s.node_tokens ? "on" : "off (no --secret-file)"], ["Base URL", s.base_url || "—"],
      ["Directory logins", s.ldap || "not configured"], ["Console sessions", s.sessions],
      ["Media templates", s.media_templates],
    ];
    const body = $("#status-main tbody"); body.textContent = "";
    for (const [k, v] of rows) body.append(el("tr", {}, el("th", {}, k), el("td", { className: k === "Last reload error" && v !== "none" ? "error" : "" }, v)));
    const fw = $("#status-fw tbody"); fw.textContent = "";
    for (const f of s.firmware) fw.append(el("tr", {}, el("td", {}, f.name), el("td", {}, f.origin), el("td", { className: "mono" }, f.sha256.slice(0, 16) + "…")));
  }

  start();
})();
