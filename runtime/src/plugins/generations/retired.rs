//! Generations that no longer serve: retiring one, closing it once it
//! has drained, and confirming (in `/proc/self/maps`) whether the dynamic
//! loader really unmapped it, or why it is kept.

use super::*;

/// A generation that no longer serves.
#[derive(Debug)]
pub(super) struct Retired {
    /// Held until it drains; `None` once closed.
    pub(super) plugin: Option<Arc<LoadedPlugin>>,
    pub(super) view: GenerationView,
    shadow: PathBuf,
    /// Where its code was: a loader handing this image back is caught.
    code_address: usize,
    /// Its address ranges, taken before it is closed when unmapped
    /// generations are to stay reserved (`protect_retired`).
    reserve: Option<Vec<Range<usize>>>,
}

impl Generations {
    /// Whether a generation that may still be mapped has its code at
    /// `address`.
    pub(super) fn is_live_image(&self, address: usize) -> bool {
        let mut serving = self.files.values().filter_map(|s| s.serving.as_deref());
        serving.any(|p| p.code_address() == address)
            || self
                .retired
                .iter()
                .filter(|r| r.view.state != GenerationState::Unmapped)
                .any(|r| r.code_address == address)
    }

    pub(super) fn retire(&mut self, plugin: Arc<LoadedPlugin>) {
        let mut view = view_of(&plugin, GenerationState::Draining);
        view.reason = Some("calls that started on it may still be running".to_owned());
        self.retired.push(Retired {
            shadow: plugin.shadow.clone(),
            code_address: plugin.code_address(),
            plugin: Some(plugin),
            view,
            reserve: None,
        });
    }

    /// Takes out the generations that have drained (the table holds the
    /// only reference: no call, reply or hook can reach them any more)
    /// and marks them `closing`; the caller closes them, without holding
    /// the table, and reports back with [`Generations::settle_closed`].
    pub fn take_drained(&mut self) -> Vec<(u64, Arc<LoadedPlugin>)> {
        if self.frozen {
            return Vec::new();
        }
        let mut drained = Vec::new();
        for retired in &mut self.retired {
            let unique = retired
                .plugin
                .as_mut()
                .is_some_and(|p| Arc::get_mut(p).is_some());
            if retired.view.state != GenerationState::Draining || !unique {
                continue;
            }
            if let Some(plugin) = retired.plugin.take() {
                if self.settings.protect_retired {
                    retired.reserve = super::super::maps::ranges_of(&retired.shadow);
                }
                retired.view.calls = plugin.calls.load(std::sync::atomic::Ordering::Relaxed);
                retired.view.state = GenerationState::Closing;
                retired.view.reason =
                    Some("drained: its shutdown hook and dlclose are running".into());
                drained.push((retired.view.generation, plugin));
            }
        }
        drained
    }

    /// Records how closing `generation` went, and whether it is mapped.
    pub fn settle_closed(&mut self, generation: u64, close_error: Option<String>) {
        if let Some(retired) = self
            .retired
            .iter_mut()
            .find(|r| r.view.generation == generation)
        {
            settle(retired, close_error);
        }
    }

    /// Whether a retired generation is still draining (calls that
    /// started on it may be running): the watch looks again soon.
    pub fn has_draining(&self) -> bool {
        self.retired
            .iter()
            .any(|r| r.view.state == GenerationState::Draining)
    }

    /// The images of closed generations that stayed mapped.
    pub fn retired_mapped_images(&self) -> Vec<PathBuf> {
        self.retired
            .iter()
            .filter(|r| r.view.state == GenerationState::RetiredMapped)
            .map(|r| r.shadow.clone())
            .collect()
    }

    /// Whether server exit has stopped reloading.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// With `recheck_mapped`, checks `/proc/self/maps` again for closed
    /// generations that stayed mapped, and forgets the oldest unmapped
    /// ones past `UNMAPPED_KEPT`. Returns whether anything changed.
    pub fn sweep(&mut self, recheck_mapped: bool) -> bool {
        if self.frozen {
            return false;
        }
        let mut changed = false;
        for retired in &mut self.retired {
            if retired.view.state == GenerationState::RetiredMapped
                && recheck_mapped
                && super::super::maps::is_mapped(&retired.shadow) == Some(false)
            {
                settle(retired, None);
                changed = true;
            }
        }
        let unmapped = self
            .retired
            .iter()
            .filter(|r| r.view.state == GenerationState::Unmapped)
            .count();
        if unmapped > UNMAPPED_KEPT {
            let mut drop_count = unmapped - UNMAPPED_KEPT;
            self.retired.retain(|r| {
                let drop = drop_count > 0 && r.view.state == GenerationState::Unmapped;
                drop_count -= usize::from(drop);
                !drop
            });
        }
        changed
    }
}

/// After `close`: unmapped (and its copy deleted), or still mapped, and
/// why.
fn settle(retired: &mut Retired, close_error: Option<String>) {
    match super::super::maps::is_mapped(&retired.shadow) {
        Some(false) => {
            let _ = std::fs::remove_file(&retired.shadow);
            retired.view.state = GenerationState::Unmapped;
            retired.view.reason = retired.reserve.take().map(|ranges| reserve(&ranges));
            tracing::info!(
                generation = retired.view.generation,
                plugin = %retired.view.plugin,
                reserved = retired.view.reason.as_deref().unwrap_or("no"),
                "plugin generation unmapped"
            );
        }
        mapped => {
            retired.view.state = GenerationState::RetiredMapped;
            retired.view.reason = Some(match (close_error, mapped) {
                (Some(e), _) => format!("dlclose failed: {e}"),
                (None, None) => "this system has no /proc/self/maps to confirm an unload; assumed mapped".to_owned(),
                (None, Some(_)) => "the dynamic loader kept it after dlclose: a thread that ran its code still \
                    holds thread-local destructors from it (a thread_local! with Drop), or a thread it \
                    started is still running; it unmaps when those threads exit"
                    .to_owned(),
            });
            tracing::info!(
                generation = retired.view.generation,
                plugin = %retired.view.plugin,
                reason = retired.view.reason.as_deref().unwrap_or(""),
                "plugin generation closed but still mapped"
            );
        }
    }
}

/// Reserves an unmapped image's former address ranges with no access
/// (`protect_retired`); says what was done, for `/status`.
fn reserve(ranges: &[Range<usize>]) -> String {
    let listed = ranges
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(" ");
    match super::super::maps::reserve_no_access(ranges) {
        Ok(()) => format!(
            "reload_protect_retired: its former address ranges stay reserved with no access, so a \
             stale pointer into them faults: {listed}"
        ),
        Err(e) => format!(
            "reload_protect_retired: could not reserve its former address ranges {listed}: {e}"
        ),
    }
}
