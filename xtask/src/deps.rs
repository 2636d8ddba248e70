//! `cargo xtask deps`: the architecture check over the daemon's top-level modules.
//!
//! `connmirror/src` is organised as one folder (or file) per concept: `capture`,
//! `flow`, `journal`, … A top-level module is `name.rs` or `name/mod.rs` with the
//! files below `name/`; `lib.rs` and `main.rs` are the crate root and no module.
//! This task finds which top-level modules each one uses, prints that graph (as
//! Mermaid too, for docs/architecture.md) with its layers, and fails on a cycle,
//! naming one reference per edge so a developer knows what to move. Without
//! cycles the concepts can be read, tested and changed from the bottom up.
//!
//! The scan is lexical, not a compiler pass, and counts all code, `#[cfg(test)]`
//! code included: every `crate::a…`, `crate::{a, b::c}` (nested and multi-line)
//! and `super::…` that climbs out of its top-level module is an edge, in `use`
//! declarations and inline paths alike. Comments (doc comments and their
//! intra-doc links too) and string and character literals are skipped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::workspace;

/// Where the daemon's modules live, relative to the workspace root.
pub const DEFAULT_SRC: &str = "connmirror/src";

/// `cargo xtask deps`: prints the module graph of `src` (relative to the
/// workspace root), as Mermaid too when `markdown` is set, then its layers;
/// fails on a cycle.
pub fn run(src: &Path, markdown: bool) -> Result<()> {
    let label = src.display().to_string();
    let graph = Graph::build(&scan(&workspace::root().join(src))?);
    print!("{}", graph.render_text(&label));
    if markdown {
        print!("{}", graph.render_mermaid());
    }
    let layers = graph.layers(&label)?;
    print!("{}", render_layers(&layers));
    Ok(())
}

/// The `deps` part of `cargo xtask lint`: fails on a cycle in `src`, else
/// prints a one-line summary.
pub fn check(src: &Path) -> Result<()> {
    let label = src.display().to_string();
    let graph = Graph::build(&scan(&workspace::root().join(src))?);
    let layers = graph.layers(&label)?;
    println!(
        "{label}: {} in {}, {}, no cycles",
        counted(graph.uses.len(), "top-level module"),
        counted(layers.len(), "layer"),
        counted(graph.edges().len(), "dependency edge"),
    );
    Ok(())
}

/// One `.rs` file of a scanned source tree.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path below the scanned directory, e.g. `journal/storage/writer.rs`.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

/// Reads every `.rs` file below `dir`, sorted by path.
pub fn scan(dir: &Path) -> Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files)?;
    if files.is_empty() {
        bail!(
            "no .rs files under {}: point --src at a crate's src directory",
            dir.display()
        );
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Adds the `.rs` files below `root/rel` to `out`, recursively.
fn collect(root: &Path, rel: &Path, out: &mut Vec<SourceFile>) -> Result<()> {
    let dir = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "reading the directory {}: does it exist? (--src names another)",
            dir.display()
        )
    })?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = rel.join(entry.file_name());
        let kind = entry
            .file_type()
            .with_context(|| format!("finding the type of {}", entry.path().display()))?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let full = root.join(&path);
            let text = std::fs::read_to_string(&full)
                .with_context(|| format!("reading {}: is it UTF-8 text?", full.display()))?;
            out.push(SourceFile { path, text });
        }
    }
    Ok(())
}

/// The top-level module a file below `src` belongs to: its first path
/// component without `.rs`. `lib.rs` and `main.rs` (the crate root) and `bin/`
/// (other crates) belong to none.
fn top_module(path: &Path) -> Option<String> {
    let mut parts = path.components();
    let first = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return (first != "bin").then(|| first.to_owned());
    }
    match first {
        "lib.rs" | "main.rs" => None,
        _ => first.strip_suffix(".rs").map(str::to_owned),
    }
}

/// How many modules deep the file at `path` is: `flow.rs` and `journal/mod.rs`
/// are 1, `journal/storage/writer.rs` is 3. That many `super::` reach the root.
fn module_depth(path: &Path) -> usize {
    let parts = path.components().count();
    if path.file_name().is_some_and(|name| name == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Where a reference from one module to another is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    /// The file, relative to the scanned directory.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
}

/// Which top-level modules use which.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module, the modules it uses, and the first reference to each.
    uses: BTreeMap<String, BTreeMap<String, Site>>,
}

impl Graph {
    /// Builds the graph of `files` (all of one source tree). References to
    /// names that are no top-level module (items of the crate root) and to the
    /// module itself are no edges.
    pub fn build(files: &[SourceFile]) -> Self {
        let mut uses: BTreeMap<String, BTreeMap<String, Site>> = files
            .iter()
            .filter_map(|file| top_module(&file.path))
            .map(|module| (module, BTreeMap::new()))
            .collect();
        for file in files {
            let Some(from) = top_module(&file.path) else {
                continue;
            };
            for (to, line) in references(&file.text, module_depth(&file.path)) {
                if to == from || !uses.contains_key(&to) {
                    continue;
                }
                let site = Site {
                    file: file.path.clone(),
                    line,
                };
                let first = uses.entry(from.clone()).or_default().entry(to);
                let first = first.or_insert_with(|| site.clone());
                if site < *first {
                    *first = site;
                }
            }
        }
        Self { uses }
    }

    /// Every edge as (user, used), sorted.
    pub fn edges(&self) -> Vec<(&str, &str)> {
        self.uses
            .iter()
            .flat_map(|(from, to)| to.keys().map(move |to| (from.as_str(), to.as_str())))
            .collect()
    }

    /// The modules in layers, top first: a module's layer is one above the
    /// highest of the modules it uses, so leaves are at the bottom (last).
    /// Fails with every cycle when there are any; `label` names the tree.
    pub fn layers(&self, label: &str) -> Result<Vec<Vec<String>>> {
        let cycles = self.cycles();
        if !cycles.is_empty() {
            bail!("{}", self.cycle_error(label, &cycles));
        }
        let mut heights = BTreeMap::new();
        let mut layers: Vec<Vec<String>> = Vec::new();
        for module in self.uses.keys() {
            let height = self.height(module, &mut heights);
            if layers.len() <= height {
                layers.resize(height + 1, Vec::new());
            }
            layers[height].push(module.clone());
        }
        layers.reverse();
        Ok(layers)
    }

    /// The length of the longest chain of uses below `module` (graph acyclic).
    fn height(&self, module: &str, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(&height) = memo.get(module) {
            return height;
        }
        let height = self.uses[module]
            .keys()
            .map(|used| self.height(used, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(module.to_owned(), height);
        height
    }

    /// One shortest cycle per group of modules that all reach each other,
    /// each starting at the group's first module by name; sorted.
    fn cycles(&self) -> Vec<Cycle> {
        let reach: BTreeMap<&str, BTreeSet<&str>> = self
            .uses
            .keys()
            .map(|module| (module.as_str(), self.reachable(module)))
            .collect();
        let mut seen = BTreeSet::new();
        let mut cycles = Vec::new();
        for (&module, reached) in &reach {
            if seen.contains(module) || !reached.contains(module) {
                continue;
            }
            let group: BTreeSet<&str> = reached
                .iter()
                .copied()
                .filter(|other| reach[other].contains(module))
                .collect();
            seen.extend(group.iter().copied());
            cycles.push(Cycle {
                path: self.shortest_cycle(module, &group),
                group: group.iter().copied().map(str::to_owned).collect(),
            });
        }
        cycles
    }

    /// The modules `from` uses directly or indirectly (itself only through a cycle).
    fn reachable(&self, from: &str) -> BTreeSet<&str> {
        let mut reached = BTreeSet::new();
        let mut todo: Vec<&str> = self.uses[from].keys().map(String::as_str).collect();
        while let Some(module) = todo.pop() {
            if reached.insert(module) {
                todo.extend(self.uses[module].keys().map(String::as_str));
            }
        }
        reached
    }

    /// A shortest cycle from `start` back to it through modules of `group`,
    /// as the modules on it from `start` (found breadth-first in name order).
    fn shortest_cycle(&self, start: &str, group: &BTreeSet<&str>) -> Vec<String> {
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(at) = queue.pop_front() {
            for next in self.uses[at].keys().map(String::as_str) {
                if next == start {
                    let mut path = vec![at];
                    while let Some(&before) = parent.get(path[path.len() - 1]) {
                        path.push(before);
                    }
                    return path.into_iter().rev().map(str::to_owned).collect();
                }
                if group.contains(next) && !parent.contains_key(next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        unreachable!("{start} is on a cycle within its group")
    }

    /// The error for `cycles`: each as `a -> b -> a`, then one reference per
    /// edge as `file:line` below `label`, then the rest of its group if any.
    fn cycle_error(&self, label: &str, cycles: &[Cycle]) -> String {
        let count = match cycles.len() {
            1 => "a cycle".to_owned(),
            n => format!("{n} cycles"),
        };
        let mut out = format!(
            "{label} has {count} between top-level modules; make every dependency point \
             one way by moving what a reference below needs into the module that uses it \
             or into a lower module both can use:"
        );
        for Cycle { path, group } in cycles {
            let closed: Vec<&str> = path.iter().chain(&path[..1]).map(String::as_str).collect();
            let _ = write!(out, "\n  {}", closed.join(" -> "));
            for pair in closed.windows(2) {
                let site = &self.uses[pair[0]][pair[1]];
                let file = Path::new(label).join(&site.file);
                let _ = write!(
                    out,
                    "\n    {} -> {}: {}:{}",
                    pair[0],
                    pair[1],
                    file.display(),
                    site.line
                );
            }
            if group.len() > path.len() {
                let _ = write!(
                    out,
                    "\n    (more cycles join {}: each reaches every other; break this \
                     one, then run `cargo xtask deps` again)",
                    group.join(", ")
                );
            }
        }
        out
    }

    /// Each module and the modules it uses, one line each.
    fn render_text(&self, label: &str) -> String {
        let mut out = format!(
            "{label}: {}, {} (module: the modules it uses)\n",
            counted(self.uses.len(), "top-level module"),
            counted(self.edges().len(), "dependency edge"),
        );
        for (module, used) in &self.uses {
            let used: Vec<&str> = used.keys().map(String::as_str).collect();
            let used = if used.is_empty() {
                "-".to_owned()
            } else {
                used.join(", ")
            };
            let _ = writeln!(out, "  {module}: {used}");
        }
        out
    }

    /// The graph as a Mermaid `graph TD` block in Markdown.
    fn render_mermaid(&self) -> String {
        let mut out = String::from("```mermaid\ngraph TD\n");
        for (module, used) in &self.uses {
            if used.is_empty() {
                let _ = writeln!(out, "    {module}");
            }
            for to in used.keys() {
                let _ = writeln!(out, "    {module} --> {to}");
            }
        }
        out.push_str("```\n");
        out
    }
}

/// `count` and `noun`, plural unless `count` is 1 (`3 layers`, `1 layer`).
fn counted(count: usize, noun: &str) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {noun}{plural}")
}

/// A cycle between top-level modules and the group it lies in.
#[derive(Debug)]
struct Cycle {
    /// The modules on the cycle, from the group's first by name.
    path: Vec<String>,
    /// Every module that reaches all the others and is reached by them, sorted.
    group: Vec<String>,
}

/// `layers` (top first) one per line, numbered from the bottom.
fn render_layers(layers: &[Vec<String>]) -> String {
    let mut out = String::from(
        "layers, roles at the top and leaves at the bottom (each uses only lower layers):\n",
    );
    for (index, layer) in layers.iter().enumerate() {
        let _ = writeln!(out, "  {}: {}", layers.len() - 1 - index, layer.join(", "));
    }
    out
}

/// The top-level modules named by the paths in `text` that start at the crate
/// root, with their lines. `depth` is the file's [`module_depth`].
fn references(text: &str, depth: usize) -> Vec<(String, usize)> {
    let tokens = tokenize(text);
    let mut found = Vec::new();
    // One entry per open brace: whether it opened an inline `mod name {`.
    let mut braces: Vec<bool> = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        let continues_path = at > 0 && tokens[at - 1].tok == Tok::PathSep;
        match &token.tok {
            Tok::Open => braces.push(opens_inline_mod(&tokens, at)),
            Tok::Close => {
                braces.pop();
            }
            Tok::Ident(word) if word == "crate" && !continues_path => {
                found.extend(path_heads(&tokens, at + 1));
            }
            Tok::Ident(word) if word == "super" && !continues_path => {
                let levels = depth + braces.iter().filter(|&&is_mod| is_mod).count();
                if let Some(sep) = climb_to_root(&tokens, at, levels) {
                    found.extend(path_heads(&tokens, sep));
                }
            }
            _ => {}
        }
    }
    found
}

/// Whether the `{` at `at` follows `mod name`.
fn opens_inline_mod(tokens: &[Token], at: usize) -> bool {
    at >= 2
        && matches!(tokens[at - 1].tok, Tok::Ident(_))
        && tokens[at - 2].tok == Tok::Ident("mod".into())
}

/// The index of the `::` after the last `super` of the chain starting at `at`
/// when the chain has at least `levels` of them (it reaches the crate root).
fn climb_to_root(tokens: &[Token], at: usize, levels: usize) -> Option<usize> {
    let supers = tokens[at..]
        .chunks(2)
        .take_while(|pair| {
            pair.len() == 2
                && pair[0].tok == Tok::Ident("super".into())
                && pair[1].tok == Tok::PathSep
        })
        .count();
    (supers >= levels.max(1)).then(|| at + 2 * supers - 1)
}

/// The first segments of the paths after a root (`crate` or enough `super`)
/// whose `::` is at `sep`: one for `::a`, one per item for `::{a, b::c}`.
fn path_heads(tokens: &[Token], sep: usize) -> Vec<(String, usize)> {
    if tokens.get(sep).map(|t| &t.tok) != Some(&Tok::PathSep) {
        return Vec::new();
    }
    match tokens.get(sep + 1) {
        Some(Token {
            tok: Tok::Ident(name),
            line,
        }) => vec![(name.clone(), *line)],
        Some(Token { tok: Tok::Open, .. }) => group_heads(&tokens[sep + 1..]),
        _ => Vec::new(),
    }
}

/// The first segment of each item of the `{…}` group `tokens` starts with
/// (nested groups add nothing; `self` is the root itself).
fn group_heads(tokens: &[Token]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    let mut item_start = false;
    for token in tokens {
        let starts_item = std::mem::take(&mut item_start);
        match &token.tok {
            Tok::Open => {
                depth += 1;
                item_start = depth == 1;
            }
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Comma => item_start = depth == 1,
            Tok::Ident(name) if starts_item && name != "self" => {
                found.push((name.clone(), token.line));
            }
            _ => {}
        }
    }
    found
}

/// A token of Rust source, as far as paths need; everything else is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier or keyword (numbers lex as these too, harmlessly).
    Ident(String),
    /// `::`.
    PathSep,
    /// `{`.
    Open,
    /// `}`.
    Close,
    /// `,`.
    Comma,
    /// Any other punctuation.
    Other,
}

/// A token and the 1-based line it starts on.
#[derive(Debug, Clone)]
struct Token {
    /// What was read.
    tok: Tok,
    /// Where it starts.
    line: usize,
}

/// Splits `text` into tokens, dropping whitespace, comments and literals.
fn tokenize(text: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        tokens: Vec::new(),
    };
    while let Some(c) = lexer.peek(0) {
        lexer.next_token(c);
    }
    lexer.tokens
}

/// The state of [`tokenize`].
struct Lexer {
    /// The source text.
    chars: Vec<char>,
    /// The index of the next char to read.
    pos: usize,
    /// The line of `chars[pos]`.
    line: usize,
    /// The tokens read so far.
    tokens: Vec<Token>,
}

impl Lexer {
    /// The char `ahead` places after the current one.
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    /// Consumes one char, counting lines.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// Consumes one token (or skipped span) starting with `c`.
    fn next_token(&mut self, c: char) {
        let line = self.line;
        let single = match (c, self.peek(1)) {
            ('/', Some('/')) => return self.skip_line_comment(),
            ('/', Some('*')) => return self.skip_block_comment(),
            ('"', _) => return self.skip_string(),
            ('\'', _) => return self.skip_char_or_lifetime(),
            (':', Some(':')) => {
                self.pos += 2;
                return self.tokens.push(Token {
                    tok: Tok::PathSep,
                    line,
                });
            }
            (c, _) if c == '_' || c.is_alphanumeric() => return self.word(),
            (c, _) if c.is_whitespace() => None,
            ('{', _) => Some(Tok::Open),
            ('}', _) => Some(Tok::Close),
            (',', _) => Some(Tok::Comma),
            _ => Some(Tok::Other),
        };
        self.bump();
        if let Some(tok) = single {
            self.tokens.push(Token { tok, line });
        }
    }

    /// Skips `//…` (`///` and `//!` too) up to the end of the line.
    fn skip_line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.pos += 1;
        }
    }

    /// Skips `/* … */`, which nests.
    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    self.pos += 2;
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.pos += 2;
                    depth -= 1;
                }
                _ => {
                    self.bump();
                }
            }
        }
    }

    /// Skips a `"…"` literal with backslash escapes (also after `b` or `c`).
    fn skip_string(&mut self) {
        self.bump();
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return,
                _ => {}
            }
        }
    }

    /// Skips a raw string's `#…"…"#…` (after its `r`, `br` or `cr`).
    fn skip_raw_string(&mut self) {
        let hashes = self.chars[self.pos..]
            .iter()
            .take_while(|&&c| c == '#')
            .count();
        self.pos += hashes + 1;
        while let Some(c) = self.bump() {
            let closes = (0..hashes).all(|i| self.peek(i) == Some('#'));
            if c == '"' && closes {
                self.pos += hashes;
                return;
            }
        }
    }

    /// Skips a character literal (`'x'`, `'\n'`, `'"'`), or only the quote of a
    /// lifetime or label, whose name is then read as a word.
    fn skip_char_or_lifetime(&mut self) {
        match (self.peek(1), self.peek(2)) {
            (Some('\\'), _) => {
                self.pos += 2;
                self.bump();
                while self.bump().is_some_and(|c| c != '\'') {}
            }
            (Some(_), Some('\'')) => {
                self.bump();
                self.bump();
                self.bump();
            }
            _ => self.pos += 1,
        }
    }

    /// Reads an identifier, keyword or number, or a raw string or identifier
    /// (`r"…"`, `br#"…"#`, `r#name`) that starts with one.
    fn word(&mut self) {
        let line = self.line;
        let start = self.pos;
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_alphanumeric())
        {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        let hashes = self.chars[self.pos..]
            .iter()
            .take_while(|&&c| c == '#')
            .count();
        let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
        if raw_prefix && self.peek(hashes) == Some('"') {
            self.skip_raw_string();
        } else if word == "r" && hashes == 1 && self.peek(1).is_some_and(char::is_alphabetic) {
            self.pos += 1;
            self.word();
        } else {
            self.tokens.push(Token {
                tok: Tok::Ident(word),
                line,
            });
        }
    }
}

#[cfg(test)]
mod tests;
