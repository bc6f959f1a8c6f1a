//! Rendering a profile's templates for a node, and the load-time check that renders them all.

use super::load::{Profiles, MAX_CHECK_ERRORS};
use crate::inventory::{Inventory, Node};
use minijinja::Value;
use std::collections::BTreeMap;

/// What a render needs besides the node.
pub struct RenderContext<'a> {
    pub node: &'a Node,
    /// Base URL of this service as the node reaches it.
    pub server: &'a str,
    /// The node token, when a secret is configured.
    pub token: Option<&'a str>,
    /// The open install's id (empty when rendering outside an install, e.g. the start-up check).
    pub install_id: &'a str,
}

impl Profiles {
    pub fn render(
        &self,
        profile: &str,
        file: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<String, String> {
        let name = format!("{profile}/{file}");
        let template = self.env.get_template(&name).map_err(|e| self.describe(&e))?;
        let vars = self.profiles.get(profile).map(|p| &p.settings.vars);
        template.render(context(ctx, vars)).map_err(|e| self.describe_render(&e, ctx.node, profile))
    }

    /// Renders every template of every profile for every node that uses it, so a template that
    /// refers to a missing column, or a value that a filter refuses (see the module
    /// documentation), fails at load time instead of at a node's boot. Each error starts with
    /// `inventory line LINE (HOST): `; [`Profiles::check_inventory`] names the file as well.
    pub fn check_against(&self, nodes: &[Node]) -> Result<(), String> {
        self.check(nodes, |node| format!("inventory line {} ({})", node.line, node.hostname))
    }

    /// [`Profiles::check_against`] with errors starting `NODES.csv:LINE (HOST): `.
    pub fn check_inventory(&self, inventory: &Inventory) -> Result<(), String> {
        let source = inventory.source();
        self.check(inventory.nodes(), |node| format!("{source}:{} ({})", node.line, node.hostname))
    }

    /// Renders in parallel on rayon's pool: at every reload, 10,000 nodes take about half the
    /// time on two cores that they take on one.
    fn check(&self, nodes: &[Node], origin: impl Fn(&Node) -> String + Sync) -> Result<(), String> {
        use rayon::prelude::*;
        let mut errors = Vec::new();
        for p in self.profiles.values() {
            let files: Vec<_> = std::iter::once("boot.ipxe".to_string())
                .chain(p.config_files.iter().map(|f| format!("config/{f}")))
                .map(|file| self.env.get_template(&format!("{}/{file}", p.name)))
                .collect();
            let users: Vec<&Node> =
                nodes.iter().filter(|n| n.profile.as_deref() == Some(&p.name)).collect();
            let found: Vec<Vec<String>> = users
                .par_iter()
                .map(|node| {
                    let render = RenderContext {
                        node,
                        server: "http://bootforge.invalid:8080",
                        token: Some("0"),
                        install_id: "check",
                    };
                    let ctx = context(&render, Some(&p.settings.vars));
                    let mut mine = Vec::new();
                    for template in &files {
                        let result =
                            template.as_ref().map_err(|e| self.describe(e)).and_then(|t| {
                                t.render_captured_to(&ctx, std::io::sink())
                                    .map(drop)
                                    .map_err(|e| self.describe_render(&e, node, &p.name))
                            });
                        if let Err(e) = result {
                            mine.push(format!("{}: {e}", origin(node)));
                        }
                    }
                    mine
                })
                .collect();
            errors.extend(found.into_iter().flatten());
        }
        if errors.len() > MAX_CHECK_ERRORS {
            let more = errors.len() - MAX_CHECK_ERRORS;
            errors.truncate(MAX_CHECK_ERRORS);
            errors.push(format!("… and {more} more errors not listed"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// What `failed_url_with(reason)` percent-encodes: everything but letters, digits and `- . _ ~`
/// (RFC 3986's unreserved characters), so the URL stays one word for iPXE, a shell and YAML.
const REASON_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The template context; see the module documentation. `vars` are the profile's variables
/// (none when the profile is not loaded, which a render then reports as undefined).
fn context(ctx: &RenderContext<'_>, vars: Option<&BTreeMap<String, String>>) -> Value {
    let server = ctx.server.to_string();
    let host = crate::serve::util::encode(&ctx.node.hostname);
    let token_q = ctx.token.map(|t| format!("token={t}"));
    let with_token = |base: String, extra: Option<String>| {
        let parts: Vec<String> = extra.into_iter().chain(token_q.clone()).collect();
        if parts.is_empty() {
            base
        } else {
            format!("{base}?{}", parts.join("&"))
        }
    };
    let install = Some(format!("install={}", ctx.install_id));
    let done_url = with_token(format!("{server}/hosts/{host}/done"), install.clone());
    let started_url = with_token(format!("{server}/hosts/{host}/started"), install.clone());
    let failed_url = with_token(format!("{server}/hosts/{host}/failed"), install);
    let failed_base = failed_url.clone();
    // `failed_url` with `&reason=TEXT`, percent-encoded so it is one safe word in any format.
    let failed_url_with = Value::from_function(move |reason: String| {
        let encoded = percent_encoding::utf8_percent_encode(&reason, REASON_ENCODE);
        format!("{failed_base}&reason={encoded}")
    });
    let node_vars = ctx.node.template_vars();
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .flatten()
        .map(|(name, default)| {
            let value = ctx.node.vars.get(name).filter(|v| !v.is_empty()).unwrap_or(default);
            (name.clone(), value.clone())
        })
        .collect();
    let config_base = format!("{server}/config/{host}/");
    let token_for_config = token_q.clone();
    let config_url = Value::from_function(move |file: String| {
        let url = format!(
            "{config_base}{}",
            crate::serve::util::encode_path(file.trim_start_matches('/'))
        );
        match &token_for_config {
            Some(t) => format!("{url}?{t}"),
            None => url,
        }
    });
    // For installers that append file names to a base URL (cloud-init's nocloud `s=`), the
    // token travels as a `~TOKEN` path segment instead of a query.
    let config_base_url = match ctx.token {
        Some(t) => format!("{server}/config/{host}/~{t}/"),
        None => format!("{server}/config/{host}/"),
    };
    let asset_base = format!("{server}/assets/");
    let node_asset_base = asset_base.clone();
    let asset_url = Value::from_function(move |path: String| {
        format!("{asset_base}{}", crate::serve::util::encode_path(path.trim_start_matches('/')))
    });
    // `asset_url` with `?node=HOST&token=TOKEN`, so the service can tie the fetch to the node
    // (its timeline) wherever it comes from. For single files (kernel, initrd, image): a base
    // URL that an installer appends paths to (a package mirror) must stay `asset_url`'s.
    let node_q = format!("node={host}");
    let node_asset_url = Value::from_function(move |path: String| {
        let url = format!(
            "{node_asset_base}{}",
            crate::serve::util::encode_path(path.trim_start_matches('/'))
        );
        match &token_q {
            Some(t) => format!("{url}?{node_q}&{t}"),
            None => url,
        }
    });
    minijinja::context! {
        node => Value::from(node_vars),
        vars => Value::from(vars),
        hostname => ctx.node.hostname.clone(),
        server => server,
        token => ctx.token.unwrap_or(""),
        install_id => ctx.install_id,
        done_url => done_url,
        started_url => started_url,
        failed_url => failed_url,
        failed_url_with => failed_url_with,
        config_url => config_url,
        config_base_url => config_base_url,
        asset_url => asset_url,
        node_asset_url => node_asset_url,
    }
}
