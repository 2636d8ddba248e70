//! Tests of the module graph over small source trees written to a temp dir:
//! a cycle through each path form, an acyclic tree, and references that are
//! only text (comments, docs, literals).

use super::*;

/// A source tree below the system temp dir, removed when dropped (also when a
/// test fails).
struct Fixture {
    /// The tree's root, standing for a crate's `src`.
    dir: PathBuf,
}

impl Fixture {
    /// Writes `files` (path below the tree, text) to a fresh directory named
    /// after `name` and this process.
    fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("xtask-deps-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        Self { dir }
    }

    /// The graph of the tree.
    fn graph(&self) -> Graph {
        Graph::build(&scan(&self.dir).unwrap())
    }

    /// The error text of the cycle check, labelling the tree `src`.
    fn cycle_error(&self) -> String {
        let error = self.graph().layers("src").unwrap_err();
        format!("{error:#}")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first line of every cycle error, for a tree labelled `src`.
const ONE_CYCLE: &str = "src has a cycle between top-level modules; make every dependency \
                         point one way by moving what a reference below needs into the module \
                         that uses it or into a lower module both can use:";

/// `use crate::a::b;` in both directions is a cycle.
#[test]
fn cycle_through_use_paths_is_reported() {
    let tree = Fixture::new(
        "use-path",
        &[
            ("lib.rs", "pub mod a;\npub mod b;\n"),
            ("a.rs", "use crate::b::Thing;\n\npub fn f(_: Thing) {}\n"),
            ("b.rs", "//! B.\n\nuse crate::a::f;\npub struct Thing;\n"),
        ],
    );
    assert_eq!(
        tree.cycle_error(),
        format!("{ONE_CYCLE}\n  a -> b -> a\n    a -> b: src/a.rs:1\n    b -> a: src/b.rs:3")
    );
}

/// `use crate::{a, b::c}`, multi-line and nested, from a folder module's file.
#[test]
fn cycle_through_use_groups_is_reported() {
    let tree = Fixture::new(
        "use-group",
        &[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("a/mod.rs", "//! A.\nmod inner;\n"),
            (
                "a/inner.rs",
                "use std::fmt;\nuse crate::{\n    c::{self, D},\n    VERSION,\n};\n",
            ),
            ("b.rs", "pub struct B;\n"),
            ("c.rs", "use crate::{b::B, a};\n"),
        ],
    );
    assert_eq!(
        tree.cycle_error(),
        format!("{ONE_CYCLE}\n  a -> c -> a\n    a -> c: src/a/inner.rs:3\n    c -> a: src/c.rs:1")
    );
    assert_eq!(tree.graph().edges(), [("a", "c"), ("c", "a"), ("c", "b")]);
}

/// Inline paths in code (`crate::a::f()`, `crate::b::Type`) count, and the
/// cycle is named from its first module in the order the edges run.
#[test]
fn cycle_through_inline_paths_is_reported() {
    let tree = Fixture::new(
        "inline",
        &[
            ("main.rs", "fn main() { connmirror::a::f(); }\n"),
            ("a.rs", "pub fn f() {\n    crate::b::g();\n}\n"),
            (
                "b.rs",
                "pub fn g<'a>(s: &'a str) -> &'a str {\n    crate::c::T::h(s)\n}\n",
            ),
            (
                "c.rs",
                "pub struct T;\n\nfn uses() -> u8 {\n    let x = '\"';\n    crate::a::f();\n    0\n}\n",
            ),
        ],
    );
    assert_eq!(
        tree.cycle_error(),
        format!(
            "{ONE_CYCLE}\n  a -> b -> c -> a\n    a -> b: src/a.rs:2\n    b -> c: src/b.rs:2\n    \
             c -> a: src/c.rs:5"
        )
    );
}

/// Two separate cycles are both named, each with its first reference per edge.
#[test]
fn every_cycle_is_reported() {
    let tree = Fixture::new(
        "two-cycles",
        &[
            ("a.rs", "use crate::b;\n"),
            ("b.rs", "use crate::a;\nuse crate::a::X;\n"),
            ("c.rs", "use crate::d;\n"),
            ("d.rs", "fn f() { crate::c::g() }\n"),
        ],
    );
    let error = tree.cycle_error();
    assert!(error.starts_with("src has 2 cycles between top-level modules;"));
    assert!(error.ends_with(
        "\n  a -> b -> a\n    a -> b: src/a.rs:1\n    b -> a: src/b.rs:1\n  c -> d -> c\n    \
         c -> d: src/c.rs:1\n    d -> c: src/d.rs:1"
    ));
}

/// A group of modules joined by several cycles is named with one of them.
#[test]
fn larger_groups_are_named_with_one_cycle() {
    let tree = Fixture::new(
        "group",
        &[
            ("a.rs", "use crate::b;\n"),
            ("b.rs", "use crate::{a, c};\n"),
            ("c.rs", "\nuse crate::b;\n"),
        ],
    );
    assert_eq!(
        tree.cycle_error(),
        format!(
            "{ONE_CYCLE}\n  a -> b -> a\n    a -> b: src/a.rs:1\n    b -> a: src/b.rs:1\n    \
             (more cycles join a, b, c: each reaches every other; break this one, then run \
             `cargo xtask deps` again)"
        )
    );
}

/// An acyclic tree passes with exactly its edges, in layers from the top.
/// `#[cfg(test)]` code counts, `super::` counts only when it leaves its
/// top-level module, and the crate root's own items are no modules.
#[test]
fn acyclic_tree_passes_with_its_edges_and_layers() {
    let tree = Fixture::new(
        "acyclic",
        &[
            ("lib.rs", "pub mod service;\npub const VERSION: u8 = 1;\n"),
            (
                "service/mod.rs",
                "use crate::{engine::Engine, sys};\nmod run;\n",
            ),
            (
                "service/run.rs",
                "use super::super::metrics;\nuse super::*;\n",
            ),
            (
                "engine.rs",
                "pub struct Engine;\nfn f() { crate::VERSION; super::flow::g(); }\n",
            ),
            (
                "flow.rs",
                "pub fn g() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::sys::probe;\n}\n",
            ),
            ("metrics.rs", "use super::*;\n"),
            ("sys/mod.rs", "pub mod probe;\n"),
            (
                "sys/probe.rs",
                "use super::super::sys;\nuse crate::sys::probe;\n",
            ),
        ],
    );
    let graph = tree.graph();
    assert_eq!(
        graph.edges(),
        [
            ("engine", "flow"),
            ("flow", "sys"),
            ("service", "engine"),
            ("service", "metrics"),
            ("service", "sys"),
        ]
    );
    let layers = graph.layers("src").unwrap();
    assert_eq!(
        layers,
        [
            vec!["service"],
            vec!["engine"],
            vec!["flow"],
            vec!["metrics", "sys"],
        ]
    );
    assert!(
        graph
            .render_mermaid()
            .contains("    service --> engine\n    service --> metrics\n")
    );
}

/// `crate::x` in line, block and doc comments, intra-doc links and string,
/// raw string, byte string and char literals is no reference.
#[test]
fn references_in_comments_and_literals_do_not_count() {
    let text = r####"//! Module docs: [`crate::a`] and crate::a::f.
/// Item docs: [`crate::a::f`], see crate::a.
// crate::a::f();
/* crate::a /* nested crate::a */ crate::a */
/** crate::a */
fn f<'a>(x: &'a str) -> &'static str {
    let _ = "crate::a::f()";
    let _ = "escaped \" crate::a";
    let _ = r"crate::a\";
    let _ = r#"crate::a "quoted" crate::a"#;
    let _ = br##"crate::a"#crate::a"##;
    let _ = b"crate::a";
    let _ = ('{', '"', '\'', b'"');
    'outer: loop { break 'outer; }
    crate::b::g()
}
"####;
    let tree = Fixture::new(
        "text-only",
        &[
            ("a.rs", "pub fn f() {}\n"),
            ("b.rs", "pub fn g() {}\n"),
            ("c.rs", text),
        ],
    );
    assert_eq!(tree.graph().edges(), [("c", "b")]);
    assert_eq!(references(text, 1), [("b".to_owned(), 15)]);
}

/// Files map to their top-level module; the crate roots and `bin/` to none.
#[test]
fn files_belong_to_their_top_level_module() {
    let module = |path: &str| top_module(Path::new(path));
    assert_eq!(module("flow.rs").as_deref(), Some("flow"));
    assert_eq!(module("journal/mod.rs").as_deref(), Some("journal"));
    assert_eq!(
        module("journal/storage/writer.rs").as_deref(),
        Some("journal")
    );
    assert_eq!(module("lib.rs"), None);
    assert_eq!(module("main.rs"), None);
    assert_eq!(module("bin/tool.rs"), None);
    assert_eq!(module_depth(Path::new("journal/mod.rs")), 1);
    assert_eq!(module_depth(Path::new("journal/storage/writer.rs")), 3);
}
