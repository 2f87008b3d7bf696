//! `cargo xtask tidy`, second part: no circles between the modules of a crate.
//!
//! A module is a file: `a.rs` or `a/mod.rs` is module `a`, and `a/b.rs` is its child `a::b`.
//! Inline modules (`mod markers { .. }`) belong to the file that holds them, and test code
//! (`#[cfg(test)]` modules and uses) is left out: it may reach anywhere.
//!
//! Each file's paths that start with `crate::`, `super::` or `self::` (in `use` items and in
//! code; comments, strings and `$crate::` in macros do not count), and the relative `use`
//! paths that name a child module, are resolved to the module that defines what they name,
//! following re-exports (`pub use context::StageContext;` in `lib.rs` makes
//! `crate::StageContext` point at `context`). That gives edges "module X uses module Y".
//!
//! The rule:
//!
//! - An edge between a module and its own ancestor or descendant does not count: a parent
//!   using its child, and a child using `super::` items of its parent, is the usual Rust
//!   pattern.
//! - Every other edge is lifted to the siblings it runs between: for `X = p::a::..` and
//!   `Y = p::b::..`, with `p` their deepest common ancestor, it is the edge `p::a -> p::b`.
//!   So files side by side form a graph, and so do the top-level modules of a crate, each
//!   standing for its whole subtree.
//! - In each such graph of siblings, a strongly connected set of two or more modules is a
//!   circle, and tidy fails naming it with the uses that close it. Break it by moving the
//!   shared types down into a module both can use.
//!
//! It reads paths, not types, so it misses what only name resolution would find: a name that
//! a module re-exports and also uses itself, items re-exported through a glob, `#[path]`
//! attributes and macro-generated paths. What it finds is real; that it finds nothing is good
//! evidence, not proof.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

mod graph;
mod parse;

use graph::{Edge, circles};
use parse::{Parsed, UsePath, parse_file};

/// A module path below the crate root; the root is the empty path.
type ModPath = Vec<String>;

/// One module (file) of a crate, as parsed.
#[derive(Debug)]
struct Module {
    /// Its file, for messages.
    file: PathBuf,
    parsed: Parsed,
}

/// A crate's module tree, keyed by module path.
#[derive(Debug, Default)]
struct Tree {
    modules: BTreeMap<ModPath, Module>,
}

/// Checks every crate of the workspace below `root`, returning one line per circle found.
pub(crate) fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    for entry in fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let path = entry?.path();
        if path.join("Cargo.toml").is_file() && path.join("src").is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    for dir in dirs {
        for crate_root in ["lib.rs", "main.rs"] {
            let main = dir.join("src").join(crate_root);
            if !main.is_file() {
                continue;
            }
            let read = |path: &Path| fs::read_to_string(path).ok();
            let tree = Tree::load(&main, &read);
            let name = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
            let name = if name.is_empty() {
                "engine".to_owned()
            } else {
                name
            };
            for circle in tree.circles() {
                let shown = circle.replace(&format!("{}/", root.display()), "");
                problems.push(format!("{name} ({crate_root}): {shown}"));
            }
        }
    }
    Ok(problems)
}

impl Tree {
    /// Parses the crate whose root file is `main`, following `mod name;` declarations.
    fn load(main: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Tree {
        let mut tree = Tree::default();
        // Each entry: module path, file, and the folder its children live in.
        let dir = main.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut pending = vec![(ModPath::new(), main.to_path_buf(), dir)];
        while let Some((path, file, dir)) = pending.pop() {
            let Some(text) = read(&file) else { continue };
            let parsed = parse_file(&text);
            for child in &parsed.children {
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(child).join("mod.rs");
                let found = if read(&flat).is_some() {
                    Some(flat)
                } else if read(&nested).is_some() {
                    Some(nested)
                } else {
                    None
                };
                if let Some(child_file) = found {
                    let mut child_path = path.clone();
                    child_path.push(child.clone());
                    pending.push((child_path, child_file, dir.join(child)));
                }
            }
            tree.modules.insert(path, Module { file, parsed });
        }
        tree
    }

    /// Turns a path as written in module `at` (inline modules included) into a path from
    /// the crate root, or `None` when it names something outside the crate.
    fn absolute(&self, file_module: &ModPath, used: &UsePath) -> Option<ModPath> {
        let mut at = file_module.clone();
        at.extend(used.inline.iter().cloned());
        let segs = &used.segments;
        let (mut out, rest) = match segs.first().map(String::as_str) {
            Some("crate") => (ModPath::new(), &segs[1..]),
            Some("self") => (at, &segs[1..]),
            Some("super") => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                let mut up = at;
                for _ in 0..ups {
                    up.pop()?;
                }
                (up, &segs[ups..])
            }
            // A relative `use child::Item;` (2018 paths) names a child module of the file.
            Some(first) if used.in_use && used.inline.is_empty() => {
                let mut child = file_module.clone();
                child.push(first.to_owned());
                if !self.modules.contains_key(&child) {
                    return None;
                }
                (file_module.clone(), &segs[..])
            }
            _ => return None,
        };
        out.extend(rest.iter().cloned());
        Some(out)
    }

    /// The module that defines what the absolute path `segs` names, following re-exports.
    fn resolve(&self, segs: &[String], depth: usize) -> ModPath {
        let mut current = ModPath::new();
        for (i, seg) in segs.iter().enumerate() {
            let mut child = current.clone();
            child.push(seg.clone());
            if self.modules.contains_key(&child) {
                current = child;
                continue;
            }
            let Some(module) = self.modules.get(&current) else {
                return current;
            };
            // The name may be a re-export: follow it to where it is defined.
            if depth < 16
                && let Some(import) = module.parsed.imports.get(seg)
                && let Some(mut target) = self.absolute(&current, import)
            {
                target.extend(segs[i + 1..].iter().cloned());
                return self.resolve(&target, depth + 1);
            }
            return current;
        }
        current
    }

    /// The uses between modules that are neither ancestor nor descendant of each other,
    /// lifted to the siblings they run between.
    fn edges(&self) -> Vec<Edge> {
        let mut edges = Vec::new();
        for (from, module) in &self.modules {
            let mut seen = BTreeSet::new();
            for used in module.parsed.uses.iter().filter(|u| !u.reexport) {
                let Some(absolute) = self.absolute(from, used) else {
                    continue;
                };
                let to = self.resolve(&absolute, 0);
                if to.starts_with(from) || from.starts_with(&to) || !seen.insert(to.clone()) {
                    continue;
                }
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                edges.push(Edge {
                    parent: from[..common].to_vec(),
                    from: from[common].clone(),
                    to: to[common].clone(),
                    evidence: format!(
                        "{}:{} uses {}",
                        module.file.display(),
                        used.line,
                        used.segments.join("::")
                    ),
                });
            }
        }
        edges
    }

    /// One message per circle found.
    fn circles(&self) -> Vec<String> {
        circles(&self.edges())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn tree(files: &[(&str, &str)]) -> Tree {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect();
        Tree::load(Path::new("src/lib.rs"), &|p: &Path| files.get(p).cloned())
    }

    #[test]
    fn siblings_using_each_other_are_a_circle() {
        let t = tree(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "//! A.\nuse crate::b::B;\npub struct A;"),
            ("src/b.rs", "//! B.\npub struct B(crate::a::A);"),
        ]);
        let found = t.circles();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a -> b -> a"), "{found:?}");
        assert!(
            found[0].contains("src/a.rs:2 uses crate::b::B"),
            "{found:?}"
        );
    }

    #[test]
    fn re_exports_are_followed() {
        let t = tree(&[
            (
                "src/lib.rs",
                "mod a;\nmod b;\npub use a::A;\npub use b::B;\n",
            ),
            ("src/a.rs", "use crate::B;\npub struct A;"),
            ("src/b.rs", "use crate::{A};\npub struct B;"),
        ]);
        assert_eq!(t.circles().len(), 1);
    }

    #[test]
    fn parent_and_child_do_not_count() {
        let t = tree(&[
            ("src/lib.rs", "mod a;\n"),
            ("src/a.rs", "mod b;\nuse b::B;\npub struct A;"),
            ("src/a/b.rs", "use super::A;\npub struct B;"),
        ]);
        assert!(t.circles().is_empty());
    }

    #[test]
    fn subtrees_count_as_their_top_module() {
        let t = tree(&[
            ("src/lib.rs", "mod a;\nmod c;\n"),
            ("src/a/mod.rs", "mod b;\nuse crate::c::C;\n"),
            ("src/a/b.rs", "pub struct B;"),
            ("src/c.rs", "use crate::a::b::B;\npub struct C;"),
        ]);
        let found = t.circles();
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn comments_strings_and_tests_do_not_count() {
        let t = tree(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            (
                "src/a.rs",
                "//! See [`B`](crate::b::B).\nconst S: &str = \"crate::b::B\";\n\
                 #[cfg(test)]\nmod tests { use crate::b::B; }\n",
            ),
            ("src/b.rs", "use crate::a::S;\npub struct B;"),
        ]);
        assert!(t.circles().is_empty());
    }
}
