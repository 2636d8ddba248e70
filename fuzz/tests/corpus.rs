//! Runs every file of `corpus/TARGET/` through its target once, on stable:
//! what `cargo fuzz` found interesting (and the seeds from the tests) stays
//! decoded without a panic, so a regression fails `cargo xtask test`. Each
//! target must have a corpus.

use std::path::Path;

#[test]
fn every_corpus_file_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in connmirror_fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs a corpus)", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name}: {} panicked", path.display());
            files += 1;
        }
        assert!(files > 0, "{}: an empty corpus", dir.display());
        println!("{name}: {files} corpus files");
    }
}

/// Every target has its libFuzzer binary, declared in the manifest, and a
/// corpus directory: `cargo xtask fuzz` runs what the manifest declares.
#[test]
fn every_target_has_a_binary_declared_in_the_manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the manifest");
    let declared = manifest.matches("[[bin]]").count();
    assert_eq!(declared, connmirror_fuzz::TARGETS.len());
    for (name, _) in connmirror_fuzz::TARGETS {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
        assert!(
            root.join(format!("fuzz_targets/{name}.rs")).is_file(),
            "{name}"
        );
    }
}
