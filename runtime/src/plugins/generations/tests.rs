//! The reload table driven through a fake loader: swaps, draining and
//! closing, refusals and their retries, the generation bound, state
//! handoff and stale images, with no native code.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;
use crate::plugins::fake::FakeLoader;
use crate::plugins::services::NoServer;
use std::sync::atomic::{AtomicU64, Ordering};

/// A table over a folder of fake plugin files.
struct Table {
    table: Generations,
    loader: FakeLoader,
    dir: tempfile::TempDir,
    shadow: tempfile::TempDir,
}

fn settings(loader: &FakeLoader, max_generations: usize) -> ReloadSettings {
    ReloadSettings {
        default_timeout: Duration::from_secs(30),
        max_generations,
        preflight_timeout: None,
        protect_retired: false,
        trust: None,
        services: Arc::new(NoServer),
        loader: Arc::new(loader.clone()),
    }
}

fn table(max_generations: usize) -> Table {
    let loader = FakeLoader::default();
    let shadow_base = tempfile::tempdir().unwrap();
    let shadow = ShadowDir::create(shadow_base.path(), false).unwrap();
    Table {
        table: Generations::new(settings(&loader, max_generations), shadow),
        loader,
        dir: tempfile::tempdir().unwrap(),
        shadow: shadow_base,
    }
}

/// Installs `text` as `<name>.so` the way a deploy does (a new file
/// renamed over the old), with a modification time of its own, so no two
/// installs look alike on disk whatever the clock's resolution.
pub(crate) fn install(dir: &Path, name: &str, text: &str) -> PathBuf {
    static MTIME: AtomicU64 = AtomicU64::new(1_000_000);
    let file = dir.join(format!("{name}.{}", std::env::consts::DLL_EXTENSION));
    let staged = dir.join(format!(".{name}.partial"));
    std::fs::write(&staged, text).unwrap();
    let mtime = UNIX_EPOCH + Duration::from_secs(MTIME.fetch_add(1, Ordering::Relaxed));
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&staged, &file).unwrap();
    file
}

impl Table {
    fn install(&self, name: &str, text: &str) -> PathBuf {
        install(self.dir.path(), name, text)
    }

    fn serving(&self) -> Vec<(String, String)> {
        self.table
            .snapshot()
            .0
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect()
    }

    fn states(&self) -> Vec<(u64, GenerationState)> {
        self.table
            .views()
            .into_iter()
            .map(|v| (v.generation, v.state))
            .collect()
    }

    fn refusal_kinds(&self) -> Vec<RefusalKind> {
        self.table.snapshot().1.iter().map(|r| r.kind).collect()
    }

    /// Closes every drained generation, as the registry's sweep does.
    fn close_drained(&mut self) -> Vec<u64> {
        let drained = self.table.take_drained();
        let numbers = drained.iter().map(|(n, _)| *n).collect();
        for (generation, mut plugin) in drained {
            let closed = Arc::get_mut(&mut plugin)
                .expect("only the table held it")
                .close();
            drop(plugin);
            self.table.settle_closed(generation, closed.err());
        }
        numbers
    }
}

fn swapped(applied: Applied) -> ActionsChanged {
    match applied {
        Applied::Swapped(change) => change,
        other => panic!("expected a swap, got {other:?}"),
    }
}

#[test]
fn a_changed_file_swaps_in_a_new_generation_and_the_old_one_closes_once_drained() {
    let mut t = table(8);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x,a/y code=1");
    let first = swapped(t.table.apply(&file));
    assert_eq!(first.added, ["a/x", "a/y"]);
    let v1 = Arc::clone(&t.table.snapshot().0[0]);

    let file = t.install("alpha", "name=alpha version=2 actions=a/x,a/z code=2");
    let second = swapped(t.table.apply(&file));
    assert_eq!(
        (second.added, second.removed),
        (vec!["a/z".to_owned()], vec!["a/y".to_owned()])
    );
    assert_eq!(t.serving(), [("alpha".to_owned(), "2".to_owned())]);
    let g1 = v1.generation;
    let g2 = second.generation.unwrap();
    assert_eq!(
        t.states(),
        [
            (g2, GenerationState::Serving),
            (g1, GenerationState::Draining)
        ]
    );

    // A call still running on generation 1 (its Arc) keeps it open.
    assert!(t.close_drained().is_empty());
    assert!(t.loader.closed().is_empty());
    drop(v1);
    assert_eq!(t.close_drained(), [g1]);
    assert_eq!(t.loader.closed(), ["alpha 1"]);
    assert_eq!(
        t.states(),
        [
            (g2, GenerationState::Serving),
            (g1, GenerationState::Unmapped)
        ]
    );
}

#[test]
fn the_same_content_is_left_alone_and_a_refused_content_is_not_tried_twice() {
    let mut t = table(8);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x");
    swapped(t.table.apply(&file));
    assert!(
        matches!(t.table.apply(&file), Applied::Unchanged),
        "same file"
    );
    t.install("alpha", "name=alpha version=1 actions=a/x");
    assert!(
        matches!(t.table.apply(&file), Applied::Unchanged),
        "same content"
    );

    t.install("alpha", "junk, half written");
    assert!(matches!(t.table.apply(&file), Applied::Refused(_)));
    assert_eq!(t.refusal_kinds(), [RefusalKind::NotALibrary]);
    assert_eq!(
        t.serving(),
        [("alpha".to_owned(), "1".to_owned())],
        "the old one serves on"
    );
    assert!(
        matches!(t.table.apply(&file), Applied::Unchanged),
        "refused once"
    );

    t.install("alpha", "name=alpha version=1 actions=a/x");
    assert!(matches!(t.table.apply(&file), Applied::StatusChanged));
    assert!(t.refusal_kinds().is_empty(), "back to the serving content");
}

#[test]
fn a_path_another_file_serves_is_refused_until_that_file_goes() {
    let mut t = table(8);
    let alpha = t.install("alpha", "name=alpha version=1 actions=shared/x code=1");
    let beta = t.install("beta", "name=beta version=1 actions=shared/x,b/y code=2");
    swapped(t.table.apply(&alpha));
    assert!(matches!(t.table.apply(&beta), Applied::Refused(r) if r.contains("shared/x")));
    assert_eq!(t.refusal_kinds(), [RefusalKind::PathConflict]);
    assert_eq!(
        t.table.retryable(RefusalKind::PathConflict),
        std::slice::from_ref(&beta)
    );

    // Unchanged, it is left alone: not read, copied or logged again.
    let shadow = t.shadow.path().join(std::process::id().to_string());
    let copies = || std::fs::read_dir(&shadow).unwrap().count();
    let before = copies();
    assert!(matches!(t.table.apply(&beta), Applied::Unchanged));
    assert_eq!(copies(), before);

    std::fs::remove_file(&alpha).unwrap();
    assert!(matches!(t.table.apply(&alpha), Applied::Removed(c) if c.removed == ["shared/x"]));
    let change = swapped(t.table.apply_again(&beta));
    assert_eq!(change.added, ["shared/x", "b/y"]);
    assert!(t.table.retryable(RefusalKind::PathConflict).is_empty());
}

#[test]
fn past_max_generations_a_reload_is_refused_as_busy_until_one_is_gone() {
    let mut t = table(1);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x code=1");
    swapped(t.table.apply(&file));
    let running = Arc::clone(&t.table.snapshot().0[0]);
    t.install("alpha", "name=alpha version=2 actions=a/x code=2");
    swapped(t.table.apply(&file));
    t.install("alpha", "name=alpha version=3 actions=a/x code=3");
    assert!(matches!(t.table.apply(&file), Applied::Refused(r) if r.starts_with("busy")));
    assert_eq!(t.refusal_kinds(), [RefusalKind::Busy]);
    assert_eq!(
        t.table.retryable(RefusalKind::Busy),
        std::slice::from_ref(&file)
    );

    drop(running);
    t.close_drained();
    assert!(
        matches!(t.table.apply(&file), Applied::Unchanged),
        "the file did not change"
    );
    swapped(t.table.apply_again(&file));
    assert_eq!(t.serving(), [("alpha".to_owned(), "3".to_owned())]);
}

#[test]
fn state_is_handed_over_and_a_refused_restore_keeps_the_old_generation() {
    let mut t = table(8);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x code=1 keeps=1");
    swapped(t.table.apply(&file));
    t.install(
        "alpha",
        "name=alpha version=2 actions=a/x code=2 keeps=1 takes=ok",
    );
    swapped(t.table.apply(&file));
    let serving = Arc::clone(&t.table.snapshot().0[0]);
    assert_eq!(serving.handoff, Handoff::Restored { bytes: 5 });

    t.install(
        "alpha",
        "name=alpha version=3 actions=a/x code=3 takes=fail",
    );
    assert!(matches!(t.table.apply(&file), Applied::Refused(r) if r.contains("refused the state")));
    assert_eq!(t.refusal_kinds(), [RefusalKind::HandoffRefused]);
    assert_eq!(t.serving(), [("alpha".to_owned(), "2".to_owned())]);
    assert_eq!(
        t.loader.closed(),
        ["alpha 3"],
        "the refused generation is closed"
    );
}

#[test]
fn an_image_the_loader_hands_back_again_is_refused_as_stale() {
    let mut t = table(8);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x code=1");
    swapped(t.table.apply(&file));
    t.install("alpha", "name=alpha version=2 actions=a/x code=1");
    assert!(matches!(t.table.apply(&file), Applied::Refused(r) if r.starts_with("stale image")));
    assert_eq!(t.refusal_kinds(), [RefusalKind::StaleImage]);
    assert_eq!(t.serving(), [("alpha".to_owned(), "1".to_owned())]);
}

#[test]
fn after_shutdown_nothing_is_loaded_or_closed() {
    let mut t = table(8);
    let file = t.install("alpha", "name=alpha version=1 actions=a/x code=1");
    swapped(t.table.apply(&file));
    t.table.shutdown();
    t.install("alpha", "name=alpha version=2 actions=a/x code=2");
    assert!(matches!(t.table.apply(&file), Applied::Ignored));
    assert!(t.table.take_drained().is_empty());
    assert!(t.table.is_frozen());
}
