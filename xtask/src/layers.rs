//! The layering check: no import cycle between the top-level modules of serve-guard,
//! serve-guard-proxy and xtask.
//!
//! Reads each crate's `src/` as text (xtask keeps to std): every path that starts with
//! `crate::`, `$crate::`, `super::` or `self::` is resolved against the module it is written in
//! (the file's place in the tree plus any inline `mod x { .. }` around it), grouped imports
//! (`use crate::{a::X, b}`) included, and counts as an arrow from the top-level module it is
//! written in to the top-level module it names. A name the crate root re-exports
//! (`pub use a::X;` in lib.rs, then `crate::X`) counts as module `a`. Items of the crate root
//! itself are no module. Any strongly connected group of two or more modules fails the test,
//! with the arrows that close it and where they are written. Nothing is allowlisted: an upward
//! arrow that is wanted goes through a seam the lower module declares (a trait like
//! `store::CidrSink`), which names nothing above it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One arrow: `from` names `to`, in `file` at `line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Arrow {
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// A crate's source as text: its files by path relative to `src/`.
type Files = BTreeMap<String, String>;

fn load(src: &Path) -> Files {
    fn walk(dir: &Path, src: &Path, files: &mut Files) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, src, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).expect("below src");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                files.insert(rel.to_string_lossy().replace('\\', "/"), text);
            }
        }
    }
    let mut files = Files::new();
    walk(src, src, &mut files);
    files
}

/// At `c[i]`, the start of a raw string (`r".."`, `r#".."#`, `br#".."#`): its number of `#`
/// and the position of its opening quote.
fn raw_string(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = match (c[i], c.get(i + 1)) {
        ('r', _) => i + 1,
        ('b', Some('r')) => i + 2,
        _ => return None,
    };
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j))
}

/// The source with comments, string literals and char literals blanked out (newlines kept, so
/// line numbers stay right).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
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
        } else if let Some((hashes, quote)) = raw_string(&c, i).filter(|_| !prev_ident) {
            let mut j = quote + 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, c[j]);
                j += 1;
            }
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    blank(&mut out, ch);
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            // A char literal; otherwise a lifetime or a label, left as it is.
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The tokens that matter here, each with its line.
fn tokens(text: &str) -> Vec<(Token, usize)> {
    let c: Vec<char> = strip(text).chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' || ch == '$' {
            let start = i;
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if word == "r" && c.get(i) == Some(&'#') {
                i += 1; // `r#type` is the identifier `type`
            } else {
                out.push((Token::Ident(word), line));
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Token::Path, line));
            i += 2;
        } else if ch.is_whitespace() {
            i += 1;
        } else {
            out.push((Token::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The module path of a file: `a.rs` and `a/mod.rs` are `[a]`, `a/b.rs` is `[a, b]`.
fn file_module(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").expect("a .rs file");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The first segments that a `{ .. }` group starting at `tokens[open]` names, one per item.
fn group_heads(tokens: &[(Token, usize)], open: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut expect_head) = (0, true);
    for (token, _) in &tokens[open..] {
        match token {
            Token::Punct('{') => {
                depth += 1;
                if depth > 1 {
                    expect_head = false;
                }
            }
            Token::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Token::Punct(',') if depth == 1 => expect_head = true,
            Token::Ident(name) if depth == 1 && expect_head => {
                heads.push(name.clone());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The modules of the crate root, and the names it re-exports with the module each comes from.
fn root_names(root: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let tokens = tokens(root);
    let ident = |i: usize| match tokens.get(i) {
        Some((Token::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let mut modules = BTreeSet::new();
    let mut depth = 0;
    for (i, (token, _)) in tokens.iter().enumerate() {
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth -= 1,
            Token::Ident(kw) if depth == 0 && kw == "mod" => {
                if let (Some(name), Some((Token::Punct(';'), _))) =
                    (ident(i + 1), tokens.get(i + 2))
                {
                    modules.insert(name.to_owned());
                }
            }
            _ => {}
        }
    }
    // `use` items at the top: every leaf name (or its alias) whose path starts at a module.
    let mut reexports = BTreeMap::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].0 {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth -= 1,
            Token::Ident(kw) if depth == 0 && kw == "use" => {
                let end = (i..tokens.len())
                    .find(|&j| tokens[j].0 == Token::Punct(';'))
                    .unwrap_or(tokens.len());
                use_leaves(&tokens[i + 1..end], &mut Vec::new(), &mut |path, leaf| {
                    let path: Vec<&String> = path
                        .iter()
                        .skip_while(|s| *s == "crate" || *s == "self" || *s == "$crate")
                        .collect();
                    if let Some(first) = path.first().filter(|m| modules.contains(**m)) {
                        reexports.insert(leaf.to_owned(), (*first).clone());
                    }
                });
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    (modules, reexports)
}

/// Calls `leaf(path, name)` for every name a use tree brings in.
fn use_leaves(
    tree: &[(Token, usize)],
    prefix: &mut Vec<String>,
    leaf: &mut dyn FnMut(&[String], &str),
) {
    // Split at top-level commas (within a group) and walk each item.
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (j, (token, _)) in tree.iter().enumerate() {
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                items.push(&tree[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items {
        let base = prefix.len();
        let mut j = 0;
        while j < item.len() {
            match &item[j].0 {
                Token::Ident(s) if s == "as" => {
                    if let Some((Token::Ident(alias), _)) = item.get(j + 1) {
                        leaf(prefix, alias);
                    }
                    prefix.truncate(base);
                    j = item.len();
                    continue;
                }
                Token::Ident(s) => prefix.push(s.clone()),
                Token::Punct('{') => {
                    let inner = &item[j + 1..item.len() - 1];
                    use_leaves(inner, prefix, leaf);
                    prefix.truncate(base);
                    j = item.len();
                    continue;
                }
                _ => {}
            }
            j += 1;
        }
        if prefix.len() > base
            && let Some(last) = prefix.last().cloned()
        {
            leaf(prefix, &last);
        }
        prefix.truncate(base);
    }
}

/// Every arrow between two different top-level modules of the crate whose root file is `root`.
fn arrows(files: &Files, root: &str) -> (BTreeSet<String>, Vec<Arrow>) {
    let (modules, reexports) = root_names(&files[root]);
    let mut out = Vec::new();
    for (rel, text) in files {
        let file_path = file_module(rel);
        let Some(top) = file_path.first().filter(|m| modules.contains(*m)) else {
            continue; // the root itself, or a file of another root (src/bin/..)
        };
        let tokens = tokens(text);
        // Inline modules around each token: (name, brace depth inside it).
        let (mut inline, mut depth): (Vec<(String, usize)>, usize) = (Vec::new(), 0);
        let mut pending_mod: Option<String> = None;
        for (i, (token, line)) in tokens.iter().enumerate() {
            match token {
                Token::Punct('{') => {
                    depth += 1;
                    if let Some(name) = pending_mod.take() {
                        inline.push((name, depth));
                    }
                    continue;
                }
                Token::Punct('}') => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                    continue;
                }
                Token::Ident(kw) if kw == "mod" => {
                    if let Some((Token::Ident(name), _)) = tokens.get(i + 1) {
                        pending_mod = Some(name.clone());
                    }
                    continue;
                }
                Token::Punct(';') => pending_mod = None,
                _ => {}
            }
            let Token::Ident(start) = token else { continue };
            // Only the start of a path: `a::crate` cannot be, `x::super` neither.
            if i > 0 && tokens[i - 1].0 == Token::Path {
                continue;
            }
            let here = || -> Vec<String> {
                let mut here = file_path.clone();
                here.extend(inline.iter().map(|(n, _)| n.clone()));
                here
            };
            let mut base = match start.as_str() {
                "crate" | "$crate" => Vec::new(),
                "self" => here(),
                "super" => {
                    let mut up = here();
                    up.pop();
                    up
                }
                _ => continue,
            };
            let mut j = i + 1;
            if tokens.get(j).map(|t| &t.0) != Some(&Token::Path) {
                continue;
            }
            j += 1;
            // `super::super::..`
            while let (Some((Token::Ident(s), _)), Some((Token::Path, _))) =
                (tokens.get(j), tokens.get(j + 1))
            {
                if s != "super" {
                    break;
                }
                base.pop();
                j += 2;
            }
            let heads = match tokens.get(j) {
                Some((Token::Ident(name), _)) => vec![name.clone()],
                Some((Token::Punct('{'), _)) => group_heads(&tokens, j),
                _ => Vec::new(),
            };
            for head in heads {
                let target = match base.first() {
                    Some(first) => Some(first.clone()),
                    None if modules.contains(&head) => Some(head),
                    None => reexports.get(&head).cloned(),
                };
                if let Some(to) = target.filter(|to| to != top) {
                    out.push(Arrow {
                        from: top.clone(),
                        to,
                        file: rel.clone(),
                        line: *line,
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    (modules, out)
}

/// The strongly connected groups of two or more modules (Tarjan), each sorted.
fn cycles(modules: &BTreeSet<String>, arrows: &[Arrow]) -> Vec<Vec<String>> {
    struct Walk<'a> {
        next: BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            let next: Vec<&str> = self.next.get(v).into_iter().flatten().copied().collect();
            for w in next {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self
                    .stack
                    .iter()
                    .rposition(|m| *m == v)
                    .expect("on the stack");
                let mut group: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for a in arrows {
        walk.next.entry(&a.from).or_default().insert(&a.to);
    }
    for m in modules {
        if !walk.index.contains_key(m.as_str()) {
            walk.visit(m);
        }
    }
    walk.found.sort();
    walk.found
}

/// The cycles of a crate as a report, empty when there are none.
fn report(files: &Files, root: &str) -> String {
    let (modules, arrows) = arrows(files, root);
    let mut report = String::new();
    for group in cycles(&modules, &arrows) {
        report.push_str(&format!("cycle between {}:\n", group.join(", ")));
        for a in &arrows {
            if group.contains(&a.from) && group.contains(&a.to) {
                report.push_str(&format!(
                    "  {} -> {}  ({}:{})\n",
                    a.from, a.to, a.file, a.line
                ));
            }
        }
    }
    report
}

fn check(crate_dir: &str, root: &str) {
    let src = crate::toolchains::workspace_root()
        .join(crate_dir)
        .join("src");
    let files = load(&src);
    assert!(files.contains_key(root), "{}: no {root}", src.display());
    let report = report(&files, root);
    assert!(
        report.is_empty(),
        "{crate_dir}: the top-level modules import each other in a circle; make the arrows go one \
         way (move the shared piece down, or declare a seam in the lower module):\n{report}"
    );
}

#[test]
fn serve_guard_has_no_cycle() {
    check("serve-guard", "lib.rs");
}

#[test]
fn serve_guard_proxy_has_no_cycle() {
    check("serve-guard-proxy", "lib.rs");
}

#[test]
fn xtask_has_no_cycle() {
    check("xtask", "main.rs");
}

fn fixture(files: &[(&str, &str)]) -> Files {
    files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect()
}

#[test]
fn finds_the_arrows_of_every_path_form() {
    let files = fixture(&[
        (
            "lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub mod e;\npub use e::Thing;\n",
        ),
        (
            "a.rs",
            "use crate::{b::X, c};\n// crate::d::not_this\nfn f() { let s = \"crate::d::nor_this\"; }\n",
        ),
        ("b/mod.rs", "pub mod inner;\nfn g() { super::d::call(); }\n"),
        ("b/inner.rs", "use super::super::c::Y;\nuse super::Z;\n"),
        (
            "c.rs",
            "fn h() -> crate::Thing { todo!() }\nmod tests { use super::*; }\n",
        ),
        ("d.rs", "fn i<'a>(x: &'a str) -> char { 'x' }\n"),
        ("e.rs", ""),
    ]);
    let (_, arrows) = arrows(&files, "lib.rs");
    let pairs: Vec<(&str, &str)> = arrows
        .iter()
        .map(|a| (a.from.as_str(), a.to.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "e")],
        "{arrows:#?}"
    );
}

#[test]
fn reports_a_cycle_with_its_arrows() {
    let files = fixture(&[
        ("main.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b;\n"),
        ("b.rs", "fn f() { crate::c::g() }\n"),
        ("c/mod.rs", "mod x { use crate::a::Z; }\n"),
    ]);
    assert_eq!(
        report(&files, "main.rs"),
        "cycle between a, b, c:\n  a -> b  (a.rs:1)\n  b -> c  (b.rs:1)\n  c -> a  (c/mod.rs:1)\n"
    );
    let acyclic = fixture(&[
        ("main.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b;\n"),
        ("b.rs", ""),
    ]);
    assert_eq!(report(&acyclic, "main.rs"), "");
}
