//! The `mirror` role: the engine run on its own until SIGINT or SIGTERM.

use crate::engine::{Engine, Event, MirrorArgs, Never, Signals, announce_ready, detach_pinned};

/// Runs the mirror until SIGINT or SIGTERM (or with `--detach-all`, removes
/// what is pinned).
pub async fn run(args: MirrorArgs) -> anyhow::Result<()> {
    if args.detach_all {
        return detach_pinned(&args);
    }
    let mut mirror = Engine::start(args)?;
    // Handlers first: a SIGINT sent the moment `ready` appears must already
    // detach cleanly rather than kill the process.
    let mut signals = Signals::install()?;
    announce_ready()?;
    while let Event::Scrape(scrape) = mirror.next_event(&mut signals, None::<&mut Never>).await? {
        scrape.answer(mirror.families());
    }
    mirror.finish(serde_json::Map::new())?;
    Ok(())
}
