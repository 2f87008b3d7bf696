//! `cargo xtask tidy`: the house rules that a compiler does not check.
//!
//! - No source file outside `tests/` and `benches/` is over [`MAX_LINES`] lines: a longer one
//!   is usually two concepts.
//! - Every source file starts with a `//!` line saying what it is for.
//! - No crate has a circle between its modules (see [`crate::circles`] for the rule).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The most lines a source file may have.
pub(crate) const MAX_LINES: usize = 600;

/// Checks every Rust source file below `root` (outside `target/`, `tests/` and `benches/`).
pub(crate) fn tidy(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    collect(root, &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    for path in &files {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let shown = path.strip_prefix(root).unwrap_or(path).display();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{shown}: {lines} lines (at most {MAX_LINES}); split it by concept"
            ));
        }
        if !text.trim_start().starts_with("//!") {
            problems.push(format!(
                "{shown}: does not start with a `//!` line saying what it is for"
            ));
        }
    }
    problems.extend(crate::circles::check(root)?);
    if !problems.is_empty() {
        bail!(
            "tidy found {} problems:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    eprintln!(
        "tidy: {} source files checked, no module circles",
        files.len()
    );
    Ok(())
}

/// The `.rs` files below `dir`, skipping build output, hidden folders, tests and benches.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !(name.starts_with('.') || matches!(name, "target" | "tests" | "benches")) {
                collect(&path, files)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}
