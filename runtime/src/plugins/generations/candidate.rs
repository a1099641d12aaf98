//! The reload transaction: what becomes of one changed plugin file.
//!
//! A candidate is read once, into a fresh shadow copy, and hashed on the
//! way; the file (and what was opened) is checked for who could have
//! written it; the copy is checked as an ELF, opened first by a child
//! process (the preflight), checked for path conflicts, and only then
//! loaded here, its predecessor's state handed over, and swapped in. Any
//! failure leaves the serving generation exactly as it was, with the
//! refusal (and when to try again) kept for `/status`.

use super::*;

impl Generations {
    /// Takes the current content of `file` (a plugin file in the actions
    /// folder, new, changed or gone) and swaps in a new generation if it
    /// is a good plugin that differs from the serving one. A file refused
    /// before and not changed since (on disk: the same inode, size, times)
    /// is left alone, unless it was refused for where it is: that depends
    /// on the folder too.
    pub fn apply(&mut self, file: &Path) -> Applied {
        self.take(file, false)
    }

    /// Takes `file` again although it has not changed, because something
    /// else did (see [`Generations::retryable`]).
    pub fn apply_again(&mut self, file: &Path) -> Applied {
        self.take(file, true)
    }

    fn take(&mut self, file: &Path, again: bool) -> Applied {
        if self.frozen || !is_plugin_file_name(file) {
            return Applied::Ignored;
        }
        let stat = std::fs::metadata(file).map(|meta| FileStat::of(&meta));
        if !again
            && let (Some(slot), Ok(stat)) = (self.files.get(file), &stat)
            && slot
                .refused
                .as_ref()
                .is_some_and(|r| r.kind != RefusalKind::UnsafePlace)
            && slot.refused_stat.as_ref() == Some(stat)
        {
            return Applied::Unchanged;
        }
        let applied = self.take_changed(file);
        if let (Applied::Refused(_), Ok(stat), Some(slot)) =
            (&applied, stat, self.files.get_mut(file))
        {
            slot.refused_stat = Some(stat);
        }
        applied
    }

    fn take_changed(&mut self, file: &Path) -> Applied {
        let stat = match std::fs::metadata(file) {
            Ok(meta) if !meta.is_file() => {
                return self.refuse(
                    file,
                    Refusal::content(
                        RefusalKind::NotARegularFile,
                        String::new(),
                        "not a regular file".to_owned(),
                    ),
                );
            }
            Ok(meta) => FileStat::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.remove(file),
            Err(e) => {
                return self.refuse(
                    file,
                    Refusal::transient(RefusalKind::Io, format!("could not stat it: {e}")),
                );
            }
        };
        if let Some(trust) = &self.settings.trust
            && let Err(problem) = trust.enforce(trust.check_file(file))
        {
            tracing::error!(file = %file.display(), "plugin file refused: {problem}");
            return self.refuse(file, Refusal::unsafe_place(problem.to_string()));
        }
        if let Some(slot) = self.files.get(file)
            && slot.serving.is_some()
            && slot.refused.is_none()
            && slot.serving_stat.as_ref() == Some(&stat)
        {
            // The very file the serving content was read from.
            return Applied::Unchanged;
        }
        let copy = match self.shadow.copy_hashed(file) {
            Ok(copy) => copy,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.remove(file),
            Err(e) => {
                return self.refuse(
                    file,
                    Refusal::transient(
                        RefusalKind::Io,
                        format!("could not copy it for loading: {e}"),
                    ),
                );
            }
        };
        if let Some(trust) = &self.settings.trust
            && let Err(problem) = trust.enforce(trust.check_opened(file, copy.source_metadata()))
        {
            tracing::error!(file = %file.display(), "plugin file refused: {problem}");
            return self.refuse(file, Refusal::unsafe_place(problem.to_string()));
        }
        let hash = copy.hash().to_owned();
        let slot = self.files.entry(file.to_path_buf()).or_default();
        if slot.serving.as_ref().is_some_and(|s| s.hash == hash) {
            slot.serving_stat = Some(stat);
            // Back to the serving content: any later refusal is moot.
            return if slot.refused.take().is_some() {
                Applied::StatusChanged
            } else {
                Applied::Unchanged
            };
        }
        if slot
            .refused
            .as_ref()
            .is_some_and(|r| r.hash.as_deref() == Some(hash.as_str()))
        {
            return Applied::Unchanged;
        }
        if let Err(e) = self.settings.loader.check(&copy) {
            let waiting = if matches!(e, super::super::elf::ElfError::Truncated { .. }) {
                " (a writer may still be writing it: a complete file is taken when it settles)"
            } else {
                ""
            };
            return self.refuse(
                file,
                Refusal::content(
                    RefusalKind::NotALibrary,
                    hash,
                    format!("not a loadable library: {e}{waiting}"),
                ),
            );
        }
        let retained = self
            .retired
            .iter()
            .filter(|r| r.view.file == file && r.view.state != GenerationState::Unmapped)
            .count();
        if retained >= self.settings.max_generations {
            return self.refuse(
                file,
                Refusal::waiting(
                    RefusalKind::Busy,
                    format!(
                    "busy: {retained} earlier generations of this file are still draining or mapped \
                     (max_generations = {}); reload refused, the serving generation keeps serving; it \
                     is retried by itself when one of them is gone (see /status: generations pinned \
                     by thread-local destructors on the server's worker threads go only with a restart)",
                    self.settings.max_generations
                )),
            );
        }
        // The paths it claims, from the preflight (or from an earlier load
        // of this very content): a conflict is refused before the server
        // runs any of its code.
        let paths = match (self.settings.preflight_timeout, self.ran_here.get(&hash)) {
            (_, Some(paths)) => Some(paths.clone()),
            (Some(timeout), None) => match preflight(copy.path(), timeout) {
                Ok(preflighted) => Some(preflighted),
                Err(e) => {
                    let refusal = if e.is_transient() {
                        Refusal::transient(e.kind(), e.to_string())
                    } else {
                        Refusal::content(e.kind(), hash, e.to_string())
                    };
                    return self.refuse(file, refusal);
                }
            },
            (None, None) => None,
        };
        if let Some(conflict) = paths.and_then(|p| self.conflict(file, &p.paths, &p.label)) {
            return self.refuse(file, Refusal::waiting(RefusalKind::PathConflict, conflict));
        }
        let copy = copy.keep();
        let loaded = on_short_thread(|| {
            LoadedPlugin::load_prepared(
                &*self.settings.loader,
                file,
                &copy,
                hash.clone(),
                Arc::clone(&self.settings.services),
            )
        });
        let mut plugin = match loaded {
            Ok(plugin) => plugin,
            Err(e) => return self.refuse(file, Refusal::content(e.kind(), hash, e.to_string())),
        };
        if self.is_live_image(plugin.code_address()) {
            // Never expected (fresh name, fresh inode, RTLD_LOCAL), but
            // if the dynamic loader ever hands back an image already
            // loaded, serving it would silently keep the old code.
            let _ = std::fs::remove_file(&copy);
            return self.refuse(
                file,
                Refusal::transient(
                    RefusalKind::StaleImage,
                    "stale image: the dynamic loader returned a library that is already loaded, so \
                     the new code would not run; reload refused"
                        .to_owned(),
                ),
            );
        }
        let paths: Vec<String> = plugin.actions.iter().map(|a| a.path.clone()).collect();
        let claimant = format!("plugin {} {}", plugin.name, plugin.version);
        if let Some(conflict) = self.conflict(file, &paths, &claimant) {
            close_unused(plugin);
            return self.refuse(file, Refusal::waiting(RefusalKind::PathConflict, conflict));
        }
        let previous = self.files.get(file).and_then(|s| s.serving.clone());
        if let Some(old) = &previous {
            match hand_over(old, &plugin) {
                Ok(handoff) => plugin.handoff = handoff,
                Err(reason) => {
                    close_unused(plugin);
                    return self.refuse(
                        file,
                        Refusal::content(RefusalKind::HandoffRefused, hash, reason),
                    );
                }
            }
        }
        tracing::info!(
            file = %file.display(),
            plugin = %plugin.name,
            version = %plugin.version,
            generation = plugin.generation,
            actions = plugin.actions.len(),
            handoff = %plugin.handoff,
            "plugin generation loaded"
        );
        self.ran_here.insert(
            plugin.hash.clone(),
            Preflighted {
                label: claimant,
                paths,
            },
        );
        let plugin = Arc::new(plugin);
        let change = ActionsChanged {
            file: file.to_path_buf(),
            plugin: plugin.name.clone(),
            version: Some(plugin.version.clone()),
            generation: Some(plugin.generation),
            added: paths_not_in(&plugin, previous.as_deref()),
            removed: previous
                .as_deref()
                .map(|old| paths_not_in(old, Some(&plugin)))
                .unwrap_or_default(),
        };
        let slot = self.files.entry(file.to_path_buf()).or_default();
        slot.refused = None;
        slot.serving_stat = Some(stat);
        if let Some(old) = slot.serving.replace(plugin) {
            self.retire(old);
        }
        Applied::Swapped(change)
    }
}
