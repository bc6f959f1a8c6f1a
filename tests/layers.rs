//! The module graph stays one-way: no import cycle anywhere in `src/`, and the service's folders
//! only import downwards (see docs/DESIGN.md, "The service's layers").
//!
//! Reads every `src/**/*.rs` (the library's modules; `main.rs` is the binary), collects what each
//! module names of the crate — `use crate::…`, `use super::…`/`self::…` (braces expanded), and
//! `crate::`/`super::` paths written inline — and resolves each to the deepest module it names.
//! Unit-test modules (`#[cfg(test)] mod … { … }`) are left out: a test may reach anywhere.
//! Comments and string literals are skipped, so a doc link is not an import.
//!
//! Written by hand rather than with a crate: what is wanted is a few dozen lines over the
//! source text (no type resolution), and the crates that draw module graphs either need nightly
//! rustdoc output or do not fail a build on a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The service's folders from the top down. A module may import its own folder and any folder of
/// a *lower* rank, never one of its own rank (siblings stay apart) or above.
///
/// `auth` sits above `store`: console sessions are state that every replica shares, so the
/// session checks read and write them through the store's domain operations.
const SERVE_LAYERS: &[(&str, u8)] = &[
    ("server", 10),
    ("dispatch", 9),
    ("api", 8),
    ("console", 8),
    ("app", 7),
    ("inputs", 6),
    ("auth", 5),
    ("store", 4),
    ("web", 3),
    ("domain", 3),
    ("util", 2),
];

/// What the pure core may not touch: the file system, sockets, the clock, threads, the runtime.
const NOT_IN_DOMAIN: &[&str] = &[
    "std::fs",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "tokio",
    "SystemTime",
    "Instant",
    "std::thread",
    "std::env",
];

type Module = Vec<String>;

struct Source {
    module: Module,
    /// The text without comments, string and char literals, and unit-test modules.
    code: String,
}

fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> =
        rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    let mut module = vec!["crate".to_string()];
    module.extend(parts);
    Some(module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Blanks comments, string literals and char literals (keeping line breaks), so that only code
/// is searched. Lifetimes (`'a`) are kept.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1).copied() == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1).copied() == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1).copied() == Some('*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1).copied() == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (c.get(i + 1).copied() == Some('"')
                || (c.get(i + 1).copied() == Some('#')
                    && matches!(c.get(i + 2).copied(), Some('"' | '#'))))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // A raw string: r"…", r#"…"#, and so on.
            let mut hashes = 0;
            i += 1;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            loop {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && c.get(i + 1).copied() == Some('\\') {
            i += 2;
            while c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c[i] == '\'' && c.get(i + 2).copied() == Some('\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Removes `#[cfg(test)]` items (the unit-test modules) from stripped code.
fn without_tests(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let Some(open) = out[at..].find(['{', ';']).map(|k| at + k) else { break };
        let mut end = open + 1;
        if out.as_bytes()[open] == b'{' {
            let mut depth = 0;
            for (k, b) in out[open..].bytes().enumerate() {
                match b {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Expands one `use` tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        return vec![path.chars().filter(|c| !c.is_whitespace()).collect()];
    };
    let prefix: String = tree[..open].chars().filter(|c| !c.is_whitespace()).collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (k, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(|i| expand(i).into_iter().map(|p| format!("{prefix}{p}")).collect::<Vec<_>>())
        .collect()
}

/// Every path of the crate the module's code names, as written (`crate::a::B`, `super::c`,
/// `x::y` for a child module `x`): those of `use` declarations, then those written inline.
fn named_paths(code: &str) -> Vec<(String, Use)> {
    let mut paths = Vec::new();
    let mut rest = code.to_string();
    let mut from = 0;
    while let Some(at) = rest[from..].find("use ").map(|k| from + k) {
        let b = rest.as_bytes();
        let boundary = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let end = rest[at..].find(';').map_or(rest.len(), |k| at + k);
        if boundary {
            let public =
                rest[..at].trim_end().ends_with("pub") || rest[..at].trim_end().ends_with(')');
            let kind = if public { Use::Reexport } else { Use::Import };
            paths.extend(expand(&rest[at + 4..end]).into_iter().map(|p| (p, kind)));
            // Blanked, so that the inline scan below does not see it again.
            rest.replace_range(at..end, &" ".repeat(end - at));
        }
        from = at + 4;
    }
    let code = rest.as_str();
    let bytes = code.as_bytes();
    let mut inline = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(start) {
            let before = if at > 0 { bytes[at - 1] } else { b' ' };
            if before.is_ascii_alphanumeric() || before == b'_' || before == b':' {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |k| at + k);
            inline.push((at, code[at..end].trim_end_matches(':').to_string()));
        }
    }
    inline.sort();
    paths.extend(inline.into_iter().map(|(_, p)| (p, Use::Inline)));
    paths
}

/// How a path was named.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Use {
    Import,
    /// `pub use`: when it re-exports the module's own descendants and the module's code does not
    /// use the name itself, it is the facade a parent offers, not a dependency of the parent.
    Reexport,
    Inline,
}

/// The module a path names: its absolute form, cut to the deepest known module.
fn resolve(from: &Module, path: &str, known: &BTreeSet<Module>) -> Option<Module> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut abs: Module;
    let mut k = 0;
    match segs.first()? {
        &"crate" => {
            abs = vec!["crate".into()];
            k = 1;
        }
        &"super" | &"self" => {
            // In `a/mod.rs` (a directory module) `super` is the parent of `a`; in `a/b.rs` the
            // parent of `b`: either way, the module's own parent.
            abs = from.clone();
            while segs.get(k) == Some(&"super") || segs.get(k) == Some(&"self") {
                if segs[k] == "super" {
                    abs.pop()?;
                }
                k += 1;
            }
        }
        first => {
            // A 2018 relative `use child::…` names a child module of this one.
            let mut child = from.clone();
            child.push(first.to_string());
            if !known.contains(&child) {
                return None;
            }
            abs = from.clone();
        }
    }
    abs.extend(segs[k..].iter().map(|s| s.to_string()));
    while !abs.is_empty() && !known.contains(&abs) {
        abs.pop();
    }
    (!abs.is_empty()).then_some(abs)
}

fn name(m: &Module) -> String {
    m.join("::")
}

struct Graph {
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn load(src: &Path) -> (Vec<Source>, Graph) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let sources: Vec<Source> = files
        .iter()
        .filter_map(|f| {
            let module = module_of(src, f)?;
            let text = std::fs::read_to_string(f).unwrap();
            Some(Source { module, code: without_tests(&strip(&text)) })
        })
        .collect();
    let known: BTreeSet<Module> = sources.iter().map(|s| s.module.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for s in &sources {
        let out = edges.entry(s.module.clone()).or_default();
        for (path, kind) in named_paths(&s.code) {
            let Some(to) = resolve(&s.module, &path, &known) else { continue };
            let descendant = to.len() > s.module.len() && to.starts_with(&s.module);
            if kind == Use::Reexport && descendant && !uses_name(&s.code, &path) {
                continue;
            }
            // The crate root only declares modules; a module naming itself is no edge.
            if to.len() > 1 && to != s.module {
                out.insert(to);
            }
        }
    }
    (sources, Graph { edges })
}

/// Whether `code` names the last segment of `path` anywhere but in `use` and `mod`
/// declarations.
fn uses_name(code: &str, path: &str) -> bool {
    let name = path.rsplit("::").next().unwrap_or(path);
    let mut rest = code.to_string();
    while let Some(at) = rest.find("use ").or_else(|| rest.find("mod ")) {
        let end = rest[at..].find(';').map_or(rest.len(), |k| at + k);
        rest.replace_range(at..end, &" ".repeat(end - at));
    }
    rest.match_indices(name).any(|(at, _)| {
        let b = rest.as_bytes();
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        (at == 0 || !ident(b[at - 1])) && b.get(at + name.len()).is_none_or(|c| !ident(*c))
    })
}

/// A cycle through the graph, as the modules on it (first repeated at the end), if any.
fn find_cycle(g: &Graph) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        m: &Module,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(m.clone(), Mark::Open);
        stack.push(m.clone());
        for to in g.edges.get(m).into_iter().flatten() {
            match marks.get(to).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|s| s == to).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(to.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(g, to, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in g.edges.keys() {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(g, m, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The folder of `src/serve` a module belongs to, and its rank.
fn serve_layer(m: &Module) -> Option<(&'static str, u8)> {
    if m.len() < 3 || m[1] != "serve" {
        return None;
    }
    let folder = SERVE_LAYERS.iter().find(|(f, _)| *f == m[2]);
    Some(*folder.unwrap_or_else(|| {
        panic!("{} is in no layer: add its folder to SERVE_LAYERS and docs/DESIGN.md", name(m))
    }))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_in_a_circle() {
    let (_, mut graph) = load(&src());
    let mut cycles = Vec::new();
    // Each cycle found is reported, then one of its edges dropped to look for the next.
    while let Some(cycle) = find_cycle(&graph) {
        cycles.push(cycle.iter().map(name).collect::<Vec<_>>().join(" -> "));
        graph.edges.get_mut(&cycle[0]).unwrap().remove(&cycle[1]);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_service_imports_only_downwards() {
    let (_, graph) = load(&src());
    let mut wrong = Vec::new();
    for (from, tos) in &graph.edges {
        let Some((folder, rank)) = serve_layer(from) else { continue };
        for to in tos {
            if to.len() == 2 && to[1] == "serve" {
                wrong.push(format!(
                    "{} -> {} (serve/mod.rs only re-exports)",
                    name(from),
                    name(to)
                ));
                continue;
            }
            let Some((to_folder, to_rank)) = serve_layer(to) else {
                // The build half (inventory, script, media…) is below the whole service; the
                // CLI is above it.
                if to.get(1).is_some_and(|t| t == "cli") {
                    wrong.push(format!(
                        "{} -> {} (the CLI is above the service)",
                        name(from),
                        name(to)
                    ));
                }
                continue;
            };
            if folder != to_folder && to_rank >= rank {
                wrong.push(format!(
                    "{} ({folder}, rank {rank}) -> {} ({to_folder}, rank {to_rank})",
                    name(from),
                    name(to)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that go up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn the_domain_is_pure() {
    let (sources, _) = load(&src());
    let mut found = Vec::new();
    for s in sources.iter().filter(|s| serve_layer(&s.module).is_some_and(|(f, _)| f == "domain")) {
        for word in NOT_IN_DOMAIN {
            if s.code.contains(word) {
                found.push(format!("{} uses {word}", name(&s.module)));
            }
        }
    }
    assert!(found.is_empty(), "domain/ must stay pure:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_what_it_must() {
    // The parser itself: braces expanded, comments and strings skipped, tests left out.
    let code = without_tests(&strip(
        "use crate::a::{b, c::{D, e as f}};\n// use crate::x;\nlet s = \"crate::y\";\nlet c = '\"';\nfn g<'a>() { super::h::i(); }\n#[cfg(test)]\nmod tests { use crate::z; }\n",
    ));
    let paths: Vec<String> = named_paths(&code).into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["crate::a::b", "crate::a::c::D", "crate::a::c::e", "super::h::i"]);
    let facade = strip("pub use child::Thing;\nfn f() {}\n");
    assert_eq!(named_paths(&facade), [("child::Thing".to_string(), Use::Reexport)]);
    assert!(!uses_name(&facade, "child::Thing"));
    assert!(!uses_name(&strip("mod inspect;\npub use inspect::inspect;\n"), "inspect::inspect"));
    assert!(uses_name(&strip("pub use child::Thing;\nfn f() -> Thing {}\n"), "child::Thing"));
    let known: BTreeSet<Module> = [
        vec!["crate", "a"],
        vec!["crate", "a", "c"],
        vec!["crate", "p", "h"],
        vec!["crate", "p", "q"],
    ]
    .into_iter()
    .map(|m| m.into_iter().map(String::from).collect())
    .collect();
    let q: Module = ["crate", "p", "q"].map(String::from).to_vec();
    assert_eq!(resolve(&q, "super::h::i", &known).map(|m| name(&m)), Some("crate::p::h".into()));
    assert_eq!(resolve(&q, "crate::a::c::D", &known).map(|m| name(&m)), Some("crate::a::c".into()));
    // A cycle is found and named.
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("crate::a"), BTreeSet::from([m("crate::b")]));
    edges.insert(m("crate::b"), BTreeSet::from([m("crate::a")]));
    let cycle = find_cycle(&Graph { edges }).expect("a cycle");
    assert_eq!(cycle.iter().map(name).collect::<Vec<_>>(), ["crate::a", "crate::b", "crate::a"]);
}
