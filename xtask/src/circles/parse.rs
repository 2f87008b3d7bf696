//! Reading one Rust file for the circle check: its child modules, its imports, and every
//! path into the crate it writes, without a full parser.
//!
//! Comments and the insides of string and character literals are blanked first, so doc
//! links and messages never count; then a small tokenizer walks `mod`, `use` and
//! `crate::`/`super::`/`self::` paths, skipping whatever `#[cfg(test)]` guards.

use std::collections::HashMap;

/// A path as written in the file.
#[derive(Debug, Clone)]
pub(super) struct UsePath {
    /// Its segments, `crate`, `super` and `self` included.
    pub(super) segments: Vec<String>,
    /// The inline modules (`mod markers { .. }`) it sits in, outermost first.
    pub(super) inline: Vec<String>,
    /// Whether it comes from a `use` item (where a relative path may name a child module).
    pub(super) in_use: bool,
    /// Whether it is a re-export (`pub use`, `pub(crate) use`): a door to the item, not a
    /// use of it, so it makes no edge (what goes through it still reaches its definer).
    pub(super) reexport: bool,
    /// The 1-based line it is on.
    pub(super) line: usize,
}

/// What the circle check needs from one file.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    /// The `mod name;` declarations: child modules in files of their own.
    pub(super) children: Vec<String>,
    /// The names brought in by `use` at file level, for following re-exports.
    pub(super) imports: HashMap<String, UsePath>,
    /// Every path the file writes (outside test code).
    pub(super) uses: Vec<UsePath>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other(char),
}

/// Parses one file's text.
pub(super) fn parse_file(text: &str) -> Parsed {
    let toks = tokenize(&blank(text));
    let mut parsed = Parsed::default();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut test_attr = false;
    let mut public = false;
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = (&toks[i].0, toks[i].1);
        match tok {
            Tok::Other('#') if matches!(toks.get(i + 1), Some((Tok::Other('['), _))) => {
                let end = matching(&toks, i + 1, '[', ']');
                let inner: Vec<&Tok> = toks[i + 2..end].iter().map(|(t, _)| t).collect();
                if is_cfg_test(&inner) {
                    test_attr = true;
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(word) if word == "pub" => {
                // Visibility (`pub(crate)`, `pub(super)`) belongs to the item that follows.
                i += 1;
                if matches!(toks.get(i), Some((Tok::Other('('), _))) {
                    i = matching(&toks, i, '(', ')') + 1;
                }
                public = true;
                continue;
            }
            Tok::Ident(word) if word == "mod" => {
                let name = match toks.get(i + 1) {
                    Some((Tok::Ident(name), _)) => name.clone(),
                    _ => String::new(),
                };
                match toks.get(i + 2) {
                    Some((Tok::Semi, _)) => {
                        if !test_attr && inline.is_empty() {
                            parsed.children.push(name);
                        }
                        i += 3;
                    }
                    Some((Tok::Open, _)) if test_attr => {
                        i = matching_brace(&toks, i + 2) + 1;
                    }
                    Some((Tok::Open, _)) => {
                        depth += 1;
                        inline.push((name, depth));
                        i += 3;
                    }
                    _ => i += 1,
                }
                test_attr = false;
                public = false;
                continue;
            }
            Tok::Ident(word) if word == "use" => {
                let mut items = Vec::new();
                i += 1;
                parse_tree(&toks, &mut i, Vec::new(), &mut items);
                // Past the `;` that ends the item.
                while i < toks.len() && toks[i].0 != Tok::Semi {
                    i += 1;
                }
                if !test_attr {
                    let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                    for (segments, name) in items {
                        let path = UsePath {
                            segments,
                            inline: names.clone(),
                            in_use: true,
                            reexport: public,
                            line,
                        };
                        if inline.is_empty()
                            && let Some(name) = name
                        {
                            parsed.imports.insert(name, path.clone());
                        }
                        parsed.uses.push(path);
                    }
                }
                test_attr = false;
                public = false;
                continue;
            }
            Tok::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && matches!(toks.get(i + 1), Some((Tok::PathSep, _)))
                    && !(i > 0 && toks[i - 1].0 == Tok::Other('$')) =>
            {
                let mut segments = vec![word.clone()];
                i += 1;
                while let (Some((Tok::PathSep, _)), Some((Tok::Ident(seg), _))) =
                    (toks.get(i), toks.get(i + 1))
                {
                    segments.push(seg.clone());
                    i += 2;
                }
                parsed.uses.push(UsePath {
                    segments,
                    inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                    in_use: false,
                    reexport: false,
                    line,
                });
                continue;
            }
            Tok::Open => depth += 1,
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        // `#[cfg(test)]` guards only the item right after it (other attributes may come
        // between); an item that is not a `mod` or `use` is skipped by the token walk.
        if !matches!(tok, Tok::Other('#' | '[' | ']')) {
            test_attr = false;
            public = false;
        }
        i += 1;
    }
    parsed
}

/// Whether an attribute's inside is `cfg(test)`.
fn is_cfg_test(inner: &[&Tok]) -> bool {
    let words: Vec<String> = inner
        .iter()
        .map(|t| match t {
            Tok::Ident(w) => w.clone(),
            Tok::Other(c) => c.to_string(),
            _ => "?".to_owned(),
        })
        .collect();
    words.concat() == "cfg(test)"
}

/// Parses one use tree starting at `toks[*i]`, pushing `(path, name it binds)` per leaf.
fn parse_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let mut segs = prefix;
    if matches!(toks.get(*i), Some((Tok::PathSep, _))) {
        *i += 1;
    }
    loop {
        match toks.get(*i).map(|(t, _)| t) {
            Some(Tok::Ident(seg)) => {
                segs.push(seg.clone());
                *i += 1;
            }
            Some(Tok::Open) => {
                *i += 1;
                loop {
                    match toks.get(*i).map(|(t, _)| t) {
                        Some(Tok::Close) => {
                            *i += 1;
                            break;
                        }
                        Some(Tok::Comma) => *i += 1,
                        None | Some(Tok::Semi) => break,
                        Some(_) => {
                            let before = *i;
                            parse_tree(toks, i, segs.clone(), out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            Some(Tok::Star) => {
                *i += 1;
                out.push((segs, None));
                return;
            }
            _ => break,
        }
        if matches!(toks.get(*i), Some((Tok::PathSep, _))) {
            *i += 1;
        } else {
            break;
        }
    }
    let mut name = segs.last().cloned();
    if let (Some((Tok::Ident(word), _)), Some((Tok::Ident(alias), _))) =
        (toks.get(*i), toks.get(*i + 1))
        && word == "as"
    {
        name = Some(alias.clone());
        *i += 2;
    }
    if segs.last().is_some_and(|s| s == "self") {
        segs.pop();
        if name.as_deref() == Some("self") {
            name = segs.last().cloned();
        }
    }
    if name.as_deref() == Some("_") {
        name = None;
    }
    out.push((segs, name));
}

/// The index of the `close` that matches the `open` at `toks[at]` (or the last token).
fn matching(toks: &[(Tok, usize)], at: usize, open: char, close: char) -> usize {
    let mut level = 0usize;
    for (j, (tok, _)) in toks.iter().enumerate().skip(at) {
        if *tok == Tok::Other(open) {
            level += 1;
        } else if *tok == Tok::Other(close) {
            level -= 1;
            if level == 0 {
                return j;
            }
        }
    }
    toks.len().saturating_sub(1)
}

/// The index of the `}` that matches the `{` at `toks[at]` (or the last token).
fn matching_brace(toks: &[(Tok, usize)], at: usize) -> usize {
    let mut level = 0usize;
    for (j, (tok, _)) in toks.iter().enumerate().skip(at) {
        match tok {
            Tok::Open => level += 1,
            Tok::Close => {
                level -= 1;
                if level == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// Splits blanked text into tokens, each with its 1-based line.
fn tokenize(text: &[char]) -> Vec<(Tok, usize)> {
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if c == '\n' {
            line += 1;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < text.len() && (text[i].is_alphanumeric() || text[i] == '_') {
                i += 1;
            }
            toks.push((Tok::Ident(text[start..i].iter().collect()), line));
            continue;
        }
        if c.is_ascii_digit() {
            while i < text.len() && (text[i].is_alphanumeric() || text[i] == '_') {
                i += 1;
            }
            toks.push((Tok::Other('0'), line));
            continue;
        }
        let tok = match c {
            ':' if text.get(i + 1) == Some(&':') => {
                i += 1;
                Some(Tok::PathSep)
            }
            '{' => Some(Tok::Open),
            '}' => Some(Tok::Close),
            ',' => Some(Tok::Comma),
            ';' => Some(Tok::Semi),
            '*' => Some(Tok::Star),
            c if c.is_whitespace() => None,
            c => Some(Tok::Other(c)),
        };
        if let Some(tok) = tok {
            toks.push((tok, line));
        }
        i += 1;
    }
    toks
}

/// The text with comments and literal contents turned into spaces (newlines kept).
fn blank(text: &str) -> Vec<char> {
    let mut out: Vec<char> = text.chars().collect();
    let n = out.len();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    let wipe = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(n)] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    while i < n {
        let c = out[i];
        let next = out.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = (i..n).find(|&j| out[j] == '\n').unwrap_or(n);
            wipe(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut j, mut level) = (i + 2, 1);
            while j < n && level > 0 {
                if out[j] == '/' && out.get(j + 1) == Some(&'*') {
                    level += 1;
                    j += 1;
                } else if out[j] == '*' && out.get(j + 1) == Some(&'/') {
                    level -= 1;
                    j += 1;
                }
                j += 1;
            }
            wipe(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && (i == 0
                || !is_ident(out[i - 1])
                || (out[i - 1] == 'b' && (i < 2 || !is_ident(out[i - 2]))))
            && matches!(next, Some('"' | '#'))
        {
            let hashes = (i + 1..n).take_while(|&j| out[j] == '#').count();
            let open = i + 1 + hashes;
            if out.get(open) != Some(&'"') {
                i += 1;
                continue;
            }
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let end = (open + 1..n)
                .find(|&j| out[j..].starts_with(&closing))
                .unwrap_or(n);
            wipe(&mut out, open + 1, end);
            i = end + closing.len();
        } else if c == '"' {
            let mut j = i + 1;
            while j < n && out[j] != '"' {
                j += if out[j] == '\\' { 2 } else { 1 };
            }
            wipe(&mut out, i + 1, j);
            i = j + 1;
        } else if c == '\'' {
            // A character literal, or else a lifetime or label (left as it is).
            if next == Some('\\') {
                let end = (i + 2..n).find(|&j| out[j] == '\'').unwrap_or(n);
                wipe(&mut out, i + 1, end);
                i = end + 1;
            } else if out.get(i + 2) == Some(&'\'') {
                wipe(&mut out, i + 1, i + 2);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        parse_file(text)
            .uses
            .iter()
            .map(|u| u.segments.join("::"))
            .collect()
    }

    #[test]
    fn use_trees_are_flattened() {
        let found = paths("use crate::{a::{self, B}, c::D as E, f::*};\nuse super::x;");
        assert_eq!(
            found,
            [
                "crate::a",
                "crate::a::B",
                "crate::c::D",
                "crate::f",
                "super::x"
            ]
        );
        let parsed = parse_file("pub(crate) use crate::c::D as E;\nuse crate::a::{self};");
        assert!(parsed.imports.contains_key("E"));
        assert!(parsed.imports.contains_key("a"));
    }

    #[test]
    fn code_paths_count_but_literals_and_macros_do_not() {
        let found = paths(
            "fn f<'a>(x: &'a str) -> char { let _ = crate::stop::Stop::new(); \
             let _ = r#\"crate::no\"#; let _ = \"crate::\\\"no\"; $crate::no::X; '\"' }\n\
             /* crate::no /* nested */ */ fn g() -> super::super::Y {}",
        );
        assert_eq!(found, ["crate::stop::Stop::new", "super::super::Y"]);
    }

    #[test]
    fn child_modules_and_test_code() {
        let parsed = parse_file(
            "mod a;\npub(crate) mod b;\n#[cfg(test)]\nmod tests;\n\
             #[cfg(test)]\nmod inline { use crate::z; }\n#[cfg(test)]\nuse crate::y;\n\
             mod m { use super::k; }\n",
        );
        assert_eq!(parsed.children, ["a", "b"]);
        let found: Vec<(String, Vec<String>)> = parsed
            .uses
            .iter()
            .map(|u| (u.segments.join("::"), u.inline.clone()))
            .collect();
        assert_eq!(found, [("super::k".to_owned(), vec!["m".to_owned()])]);
        assert!(parsed.imports.is_empty());
    }
}
