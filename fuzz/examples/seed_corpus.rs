//! Writes every target's seeds ([`connmirror_fuzz::seeds`]) into
//! `corpus/TARGET/seed-N`, replacing older seeds; what the fuzzer added stays.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in connmirror_fuzz::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in connmirror_fuzz::seeds::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: seeds written", dir.display());
    }
    Ok(())
}
