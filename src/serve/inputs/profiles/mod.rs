//! Install profiles: `--profiles DIR/NAME/` folders of minijinja templates.
//!
//! * `boot.ipxe`: the install chain, answered to `/boot/{host}` while the host is flagged;
//! * `config/**`: each file served rendered at `/config/{host}/{path}` while flagged;
//! * `profile.toml` (optional): [`Settings`].
//!
//! Every template is compiled when the profiles are loaded, so a syntax error stops the start (or
//! is reported by a reload, which keeps the old profiles) with file and line. Rendering is strict:
//! a misspelt variable is an error, not an empty string that would produce a broken installer
//! configuration. Templates see `node` (every CSV column,
//! [`crate::inventory::Node::template_vars`]), `vars` (the profile's variables, [`Settings::vars`],
//! each overridden by the node's non-empty CSV column of the same name), `server`, `token`,
//! `hostname`, `install_id`, `done_url`, `started_url`, `failed_url`, `config_base_url`, and the
//! functions `config_url(file)`, `asset_url(path)` and `failed_url_with(reason)`. An undefined
//! value is an error that names the variable and its tag (``undefined value in `{{ node.iface |
//! ipxe }}`: `node.iface`: the inventory has no `iface` column…``).
//!
//! # Escaping
//!
//! Nothing is escaped by default. The known columns (`hostname`, `ip`, `netmask`, `prefix`,
//! `cidr`, `gateway`, `dns`, `mac`, `vlan`, `server`, `profile`) and the URLs built by the service
//! are validated into forms that are safe anywhere in these formats, but every other column is
//! free text (printable, one line) and must go through the filter of the place it lands in:
//!
//! * `{{ node.iface | ipxe }}`: a value inside one argument of an iPXE command line, such as a
//!   kernel parameter. iPXE has no escape, so the filter refuses (the render fails) any value
//!   holding a character outside [`IPXE_SAFE`]; see [`ipxe_arg`].
//! * `{{ node.ssh_key | shell }}`: one word of a POSIX shell command line (kickstart `%post`,
//!   a kickstart option line, preseed `late_command`, cloud-init `late-commands`). The value is
//!   single-quoted when it holds anything but a few safe characters; line breaks and NULs are
//!   refused. See [`shell_word`]. Write no quotes around it.
//! * `{{ node.password_hash | yaml }}`: a YAML scalar (a value, a list item or a mapping key),
//!   written as a double-quoted string. See [`yaml_string`]. Write no quotes around it.
//! * `{{ node.install_disk | preseed }}`: the value of a debian-installer preseed line, which
//!   has no quoting: the filter refuses what would change the line. See [`preseed_value`].
//! * `{{ vars.mirror | url }}`: not an escape but a parse: the value must be an `http`, `https`
//!   or `ftp` URL of safe characters, and the result has its parts (`scheme`, `host`, `port`,
//!   `hostport`, `path`, `url`) for installers that take them separately. See [`parse_url`].
//!
//! [`Profiles::check_against`] renders every template for every node at load time, so a value
//! that a filter refuses stops the load (or the reload) with the CSV line and host name, instead
//! of failing that node's install later.

//!
//! The code is in three parts: [`load`] (reading and compiling the folders, and describing
//! their errors), [`render`] (the template context and rendering, and the load-time check of
//! every node), and [`filters`] (the escaping filters, pure functions of their input).

pub mod filters;
pub mod load;
pub mod render;

pub use filters::{
    ipxe_arg, parse_url, preseed_value, shell_word, yaml_string, UrlParts, IPXE_SAFE,
};
pub use load::{ClearOn, Profile, Profiles, Settings};
pub use render::RenderContext;
