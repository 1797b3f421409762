//! The layering, enforced: every module imports only the layers below it (the order of
//! `LAYERS`, which is `lib.rs`'s), and no two files import each other, directly or round a
//! cycle. Reads the source tree as text: `crate::a::b` paths, `use crate::{a, b}` groups and
//! `super::x` paths, outside `#[cfg(test)]` modules (tests may build fixtures from any layer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import only modules of lower layers; modules in one
/// layer are independent of each other.
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["error"],
    &["config"],
    &["scenario", "net", "faults"],
    &["ingest"],
    &["window"],
    &["durability", "pipeline"],
    &["risk"],
    &["flow"],
    &["history", "live"],
    &["query", "transport"],
    &["cluster"],
    &["server"],
    &["tools"],
    &["cli"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// A source file's module path, e.g. `src/server/api/ingest.rs` → `["server", "api", "ingest"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text of a file without its `#[cfg(test)]` modules and without comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: to its closing brace at the same indentation.
            let indent = line.len() - t.len();
            let Some(item) = lines.next() else { break };
            if item.trim_end().ends_with(';') {
                continue;
            }
            for l in lines.by_ref() {
                let lt = l.trim_start();
                if l.len() - lt.len() == indent && lt.starts_with('}') {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The chain of lower-case path segments at the start of `s` (`a::b::Type` → `[a, b]`).
fn chain(mut s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    loop {
        let id = ident_at(s);
        if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_lowercase()) || id == "self" {
            break;
        }
        parts.push(id.to_owned());
        s = &s[id.len()..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => break,
        }
    }
    parts
}

/// Paths (as module lists from the crate root) a file's code names.
fn imports(code: &str, me: &[String]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let mut path_from = |start: usize, base: Vec<String>| {
        let rest = &code[start..];
        let head = chain(rest);
        // What follows the chain: a `{group}` adds each member's chain.
        let consumed: usize = head.iter().map(|p| p.len() + 2).sum();
        let tail = rest.get(consumed..).unwrap_or("");
        let mut prefix = base;
        prefix.extend(head);
        if let Some(group) = tail.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for member in group[..close].split(',') {
                let member = member.trim().trim_start_matches('{');
                let mut p = prefix.clone();
                p.extend(chain(member));
                out.insert(p);
            }
        }
        out.insert(prefix);
    };
    for (i, _) in code.match_indices("crate::") {
        path_from(i + "crate::".len(), Vec::new());
    }
    // `super::` relative to this file's module (a `mod.rs` is its folder's module).
    let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::") {
            continue; // counted from the first `super`
        }
        let mut base = parent.clone();
        let mut j = i + "super::".len();
        while code[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        path_from(j, base);
    }
    out
}

/// The longest known file module a path starts with.
fn owner(path: &[String], files: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains(p))
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mods: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let me = module_path(&src, f);
        if me == ["lib"] || me == ["main"] || me == ["layers"] {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let mut deps = BTreeSet::new();
        for p in imports(&code_of(&text), &me) {
            if let Some(o) = owner(&p, &mods) {
                // A file naming its own children (`pub mod x; pub use x::Y`) is no dependency.
                if o != me && !o.starts_with(&me) {
                    deps.insert(o);
                }
            }
        }
        g.insert(me, deps);
    }
    g
}

#[test]
fn every_module_imports_only_layers_below_it() {
    let mut bad = Vec::new();
    for (me, deps) in graph() {
        let mine =
            rank(&me[0]).unwrap_or_else(|| panic!("{} is in no layer: add it to LAYERS", me.join("/")));
        for d in deps {
            let theirs = rank(&d[0]).unwrap_or(usize::MAX);
            if me[0] != d[0] && theirs >= mine {
                bad.push(format!("{} imports {}", me.join("/"), d.join("/")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that point up or sideways:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_file_imports_itself_round_a_cycle() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit(
        n: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|x| x == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &g, &mut state, &mut Vec::new()) {
                let names: Vec<String> = c.iter().map(|m| m.join("/")).collect();
                panic!("import cycle: {}", names.join(" → "));
            }
        }
    }
}

#[test]
fn the_checker_sees_grouped_and_relative_imports() {
    let me = vec!["server".to_owned(), "api".to_owned(), "ingest".to_owned()];
    let found = imports(
        "use crate::{model::Role, durability::FeedSink};\nuse super::auth::check;\nfn f() { crate::flow::Flow::new() }",
        &me,
    );
    let has = |p: &[&str]| {
        found
            .iter()
            .any(|f| f.iter().map(String::as_str).eq(p.iter().copied()))
    };
    assert!(has(&["model"]) || has(&["model", "Role"]), "{found:?}");
    assert!(
        has(&["durability"]) || has(&["durability", "FeedSink"]),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with(&["server".into(), "api".into(), "auth".into()])),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.starts_with(&["flow".into()])), "{found:?}");
    let code = code_of("use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n");
    assert!(!code.contains("cli"), "{code}");
}
