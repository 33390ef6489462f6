//! The CIDR file as the single source of truth, and the one path every change takes.
//!
//! Every change (a `cidr` verb over the control socket, the watcher seeing the file change, or the
//! CLI editing the file while no agent runs) goes through [`Store::apply`], which:
//! 1. serialises: one change at a time in this process (mutex) and across processes (flock on
//!    `<state_dir>/cidr.lock`);
//! 2. folds in an external edit of the file first, so a change never overwrites an edit it has not
//!    seen, and checks `--if-revision` against the result;
//! 3. validates the whole change before touching anything (errors name the line or argument);
//! 4. writes the file atomically, editing it in place (the operator's comments and line order
//!    stay: removed CIDRs lose their line, new ones are appended), then updates the XDP maps (the filter adds before it removes, so
//!    there is no gap); if the maps cannot be updated, it restores the old list in the maps and the
//!    old bytes in the file, so file and maps always hold the same list;
//! 5. records the revision in `<state_dir>/cidr-revision` so it survives restarts.
//!
//! The revision counts list changes. An edit that leaves the list as it was (a comment, our own
//! write seen by the watcher, an `add` of a range already present) does not make a revision.
//!
//! With `[cloud]` the maps hold the union of the file's list and the cloud's last good answer
//! ([`Store::apply_cloud`], recorded in [`cloud_state`] for the next start). The two parts stay
//! apart: the file keeps only its own entries, and the cloud's answers do not count revisions.

pub mod cloud_state;
pub mod fsutil;

use crate::cidr::{self, CidrError, CidrList};
use crate::config::cloud::Provider;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The revision file in `state_dir`: `revision N`, then the list the revision stands for.
pub const REVISION_FILE: &str = "cidr-revision";
/// The lock file in `state_dir` that serialises changes across processes.
pub const LOCK_FILE: &str = "cidr.lock";
/// How long a change waits for another process's change before giving up.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// The first revision of a list the store has never seen.
pub const FIRST_REVISION: u64 = 1;

const REVISION_PREFIX: &str = "revision ";
const FILE_HEADER: &str = "serve-guard VPC CIDR allow-list: one CIDR per line, `#` starts a comment.\n\
Edits to this file apply live; `serve-guard cidr add|remove|replace` edits it too.";
const REVISION_HEADER: &str = "serve-guard CIDR revision state; do not edit.";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    // The CIDR error is in the message, not a `source`, so `{:#}` does not print it twice.
    #[error("{path}: {error}")]
    InvalidFile { path: PathBuf, error: CidrError },
    #[error("{at}: {net} is not in the list, nothing was removed")]
    NotPresent { at: cidr::Location, net: IpNet },
    #[error(
        "the change was made against revision {expected} but the list is at revision {current}; nothing was changed (run `serve-guard cidr list` and retry)"
    )]
    Stale { expected: u64, current: u64 },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is corrupt ({reason}); remove it to start the revision count again")]
    CorruptRevision { path: PathBuf, reason: String },
    #[error(
        "another change holds {path} for more than {}s; nothing was changed",
        LOCK_TIMEOUT.as_secs()
    )]
    LockTimeout { path: PathBuf },
    #[error(
        "updating the XDP maps failed ({reason}); the file and the maps were restored to revision {revision}, nothing was changed"
    )]
    MapsRestored { reason: String, revision: u64 },
    #[error(
        "updating the XDP maps failed ({reason}) and restoring revision {revision} failed too ({restore}); the maps may hold a mix of both lists: restart the agent to reload {path}"
    )]
    MapsInconsistent {
        reason: String,
        restore: String,
        revision: u64,
        path: PathBuf,
    },
    #[error("the change worker stopped: {0}")]
    Worker(String),
    #[error(
        "{net} allows every source, which turns the filter off for its address family; pass --allow-everyone if that is meant; nothing was changed"
    )]
    EveryoneByChange { net: IpNet },
    #[error(
        "{path}: {net} allows every source, which turns the filter off for its address family; set `allow_everyone = true` in the config if that is meant"
    )]
    EveryoneInFile { path: PathBuf, net: IpNet },
    #[error("{path} is corrupt ({reason}); remove it and the next answer of the cloud rewrites it")]
    CorruptCloudState { path: PathBuf, reason: String },
    #[error(
        "{provider}: the answer holds {net}, which allows every source; refused with the whole answer (set `allow_everyone = true` if that is meant), the last good list stays"
    )]
    EveryoneFromCloud { provider: Provider, net: IpNet },
    #[error("{provider}: the answer holds no range; refused, the last good list stays")]
    EmptyCloudAnswer { provider: Provider },
}

impl StoreError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the request itself was wrong (bad input, stale revision) rather than the node.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::Cidr(_)
                | StoreError::InvalidFile { .. }
                | StoreError::NotPresent { .. }
                | StoreError::Stale { .. }
                | StoreError::EveryoneByChange { .. }
                | StoreError::EveryoneInFile { .. }
        )
    }
}

/// Where the XDP maps are updated. Implemented by the filter; tests use a recording sink.
pub trait CidrSink: Send {
    /// Makes the maps hold exactly `list`, without a gap for sources in both old and new list.
    fn load_cidrs(
        &mut self,
        list: &CidrList,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// The maps as the agent shares them.
pub type SharedSink = Arc<tokio::sync::Mutex<dyn CidrSink>>;

/// One change to the list. (On the control socket these are separate routes with their own
/// bodies, see `crate::control`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add command-line CIDRs.
    Add(Vec<String>),
    /// Remove command-line CIDRs; each must be in the list.
    Remove(Vec<String>),
    /// Replace the list with the content of a CIDR file.
    Replace(String),
    /// Re-read the CIDR file (the watcher, after an edit on disk).
    Reload,
}

/// What a change did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub revision: u64,
    /// False when the list was already what the change asked for.
    pub changed: bool,
    pub ipv4: usize,
    pub ipv6: usize,
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    /// Host bits cleared, with where the entry came from.
    pub warnings: Vec<String>,
    /// False when no agent runs: the file changed and the maps follow at the next start.
    pub applied_to_maps: bool,
}

/// The list and its revision, as `cidr list` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listing {
    /// The revision of the CIDR file's list (the cloud's answers do not count revisions).
    pub revision: u64,
    pub ipv4: usize,
    pub ipv6: usize,
    /// The list in force: the file's, and with `[cloud]` the cloud's too.
    pub cidrs: Vec<IpNet>,
    /// With `[cloud]`: the entries that come from the CIDR file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Vec<IpNet>>,
    /// With `[cloud]`: what the cloud gave and how its refresh goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudListing>,
}

/// The cloud's part of the list and the state of its refresh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CloudListing {
    #[serde(flatten)]
    pub status: CloudStatus,
    /// The ranges of the last good answer (in force).
    pub cidrs: Vec<IpNet>,
}

/// How the cloud's refresh goes: what `status`, `cidr list` and the metrics show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CloudStatus {
    /// The provider of the list in force (`None` until the cloud first answered on this node).
    pub provider: Option<Provider>,
    /// Unix seconds of the answer in force.
    pub fetched_unix: Option<u64>,
    /// Unix seconds of the last refresh, good or not.
    pub last_attempt_unix: Option<u64>,
    /// The last refresh's error; `None` once a refresh succeeds.
    pub last_error: Option<String>,
    /// Refreshes that failed or were refused since the agent started.
    pub errors: u64,
    /// Warnings of the last good answer (a fallback to the instance's subnet, for instance).
    pub warnings: Vec<String>,
    pub refresh_interval_secs: u64,
}

impl CloudStatus {
    /// Seconds since the answer in force, at `now` (unix seconds).
    pub fn age_secs(&self, now: u64) -> Option<u64> {
        self.fetched_unix.map(|t| now.saturating_sub(t))
    }
}

/// A cloud's answer, as the store applies it.
#[derive(Debug, Clone)]
pub struct CloudAnswer {
    pub provider: Provider,
    pub list: CidrList,
    pub warnings: Vec<String>,
}

/// What applying a cloud answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOutcome {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Unix seconds of the last change applied (0 = none since start).
    pub last_apply_unix: AtomicU64,
    /// Map updates that failed and watcher reloads of an invalid file.
    pub apply_errors: AtomicU64,
}

struct Current {
    /// The CIDR file's list.
    list: CidrList,
    revision: u64,
    /// The cloud's last good answer (`[cloud]` only).
    cloud: Option<cloud_state::Recorded>,
}

impl Current {
    /// What the maps hold: the file's list, and the cloud's.
    fn effective(&self) -> CidrList {
        effective(&self.list, self.cloud.as_ref())
    }
}

fn effective(file: &CidrList, cloud: Option<&cloud_state::Recorded>) -> CidrList {
    match cloud {
        Some(cloud) => file.union(&cloud.list),
        None => file.clone(),
    }
}

/// The list in force as readers see it: replaced whole after each commit, so `status`, the
/// metrics and the exposure audit never wait behind a change (parsing and compiling a list of
/// millions takes seconds).
#[derive(Clone)]
struct Published {
    /// The list in force (what the maps hold).
    list: Arc<CidrList>,
    /// The file's part; the same `Arc` as `list` without `[cloud]`.
    file: Arc<CidrList>,
    cloud: Option<Arc<CidrList>>,
    revision: u64,
}

/// The list in force in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub revision: u64,
    pub ipv4: usize,
    pub ipv6: usize,
    /// Entries from the CIDR file, and from the cloud (an entry in both counts in both).
    pub from_file: usize,
    pub from_cloud: usize,
}

/// The CIDR list, its file and its revision.
pub struct Store {
    cidr_file: PathBuf,
    state_dir: PathBuf,
    current: Mutex<Current>,
    published: std::sync::RwLock<Published>,
    sink: Mutex<Option<SharedSink>>,
    stats: ApplyStats,
    /// `allow_everyone` from the config: whether an edit of the file may bring in `0.0.0.0/0`.
    file_allows_everyone: AtomicBool,
    /// The most CIDRs per family a list may have: what the filter's maps hold (or `max_cidrs`
    /// without an agent). A longer list is refused before anything is written.
    capacity: AtomicU32,
    /// `[cloud]`: the file may be missing or empty, the cloud's answers join the list.
    cloud: bool,
    cloud_status: Mutex<CloudStatus>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cidr_file", &self.cidr_file)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Reads the CIDR file and the recorded revision. A list that differs from the recorded one
    /// (edited while no agent ran) gets the next revision. Creates `state_dir` (0700) if needed.
    pub fn open(cidr_file: &Path, state_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(cidr_file, state_dir, false)
    }

    /// [`Store::open`]; with `cloud` (`[cloud]` in the config) the file may be missing or hold
    /// no CIDR, and the cloud's last good answer (`cloud-cidrs` in `state_dir`) is in force.
    pub fn open_with(cidr_file: &Path, state_dir: &Path, cloud: bool) -> Result<Self, StoreError> {
        fsutil::create_private_dir(state_dir).map_err(StoreError::io("create", state_dir))?;
        let _lock = fsutil::lock_exclusive(&state_dir.join(LOCK_FILE), LOCK_TIMEOUT)
            .map_err(|e| lock_error(e, &state_dir.join(LOCK_FILE)))?;
        let list = read_list_with(cidr_file, cloud)?;
        let recorded = if cloud {
            cloud_state::read(state_dir)?
        } else {
            None
        };
        let revision_path = state_dir.join(REVISION_FILE);
        let revision = match read_revision(&revision_path)? {
            None => FIRST_REVISION,
            Some((revision, recorded)) if recorded == list => revision,
            Some((revision, _)) => revision + 1,
        };
        write_revision(&revision_path, revision, &list)?;
        let status = CloudStatus {
            provider: recorded.as_ref().map(|r| r.provider),
            fetched_unix: recorded.as_ref().map(|r| r.fetched_unix),
            ..CloudStatus::default()
        };
        let current = Current {
            list,
            revision,
            cloud: recorded,
        };
        Ok(Store {
            cidr_file: cidr_file.to_owned(),
            state_dir: state_dir.to_owned(),
            published: std::sync::RwLock::new(Published::of(&current)),
            current: Mutex::new(current),
            sink: Mutex::new(None),
            stats: ApplyStats::default(),
            file_allows_everyone: AtomicBool::new(false),
            capacity: AtomicU32::new(serve_guard_common::trie::DEFAULT_CIDRS_PER_FAMILY),
            cloud,
            cloud_status: Mutex::new(status),
        })
    }

    /// The list and revision as they stand on disk, without taking the lock or writing anything
    /// (`cidr list` and `status` while no agent runs). A list edited since the last recorded
    /// revision shows as the revision it will get.
    /// With `cloud`, the cloud's last good answer is part of the list, as the agent would
    /// start with it.
    pub fn peek(cidr_file: &Path, state_dir: &Path, cloud: bool) -> Result<Listing, StoreError> {
        let list = read_list_with(cidr_file, cloud)?;
        let revision = match read_revision(&state_dir.join(REVISION_FILE))? {
            None => FIRST_REVISION,
            Some((revision, recorded)) if recorded == list => revision,
            Some((revision, _)) => revision + 1,
        };
        let recorded = if cloud {
            cloud_state::read(state_dir)?
        } else {
            None
        };
        let current = Current {
            list,
            revision,
            cloud: recorded,
        };
        let status = cloud.then(|| CloudStatus {
            provider: current.cloud.as_ref().map(|r| r.provider),
            fetched_unix: current.cloud.as_ref().map(|r| r.fetched_unix),
            ..CloudStatus::default()
        });
        Ok(listing_of(&Published::of(&current), status))
    }

    /// From now on, every change also updates these maps. The agent calls this once the maps
    /// hold [`Store::list`].
    pub fn attach_sink(&self, sink: SharedSink) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// The most CIDRs per family a list may have from now on.
    pub fn set_capacity(&self, cidrs: u32) {
        self.capacity.store(cidrs, Ordering::Relaxed);
    }

    /// The config's `allow_everyone`: whether an edit of the file on disk may bring in an entry
    /// that allows every source. (A `cidr` verb needs `--allow-everyone` instead.)
    pub fn set_file_allows_everyone(&self, allowed: bool) {
        self.file_allows_everyone.store(allowed, Ordering::Relaxed);
    }

    pub fn cidr_file(&self) -> &Path {
        &self.cidr_file
    }

    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    /// The list as last applied.
    pub fn list(&self) -> CidrList {
        self.published().list.as_ref().clone()
    }

    /// Whether the list as last applied holds `addr` ([`CidrList::allows`]), without copying
    /// the list (a scrape or `status` asks this of a few peers).
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        self.published().list.allows(addr)
    }

    pub fn revision(&self) -> u64 {
        self.published().revision
    }

    /// The revision and the entries per family, without waiting for a change in progress.
    pub fn summary(&self) -> Summary {
        let published = self.published();
        let count = |l: &CidrList| l.v4().len() + l.v6().len();
        Summary {
            revision: published.revision,
            ipv4: published.list.v4().len(),
            ipv6: published.list.v6().len(),
            from_file: count(&published.file),
            from_cloud: published.cloud.as_deref().map_or(0, count),
        }
    }

    pub fn listing(&self) -> Listing {
        listing_of(&self.published(), self.cloud_status())
    }

    /// With `[cloud]`: the state of the cloud's refresh.
    pub fn cloud_status(&self) -> Option<CloudStatus> {
        self.cloud.then(|| {
            self.cloud_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    fn update_cloud_status(&self, f: impl FnOnce(&mut CloudStatus)) {
        f(&mut self.cloud_status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records a refresh that failed (the metadata service is down, slow, or answered garbage,
    /// or the store refused the answer): counted and shown; the last good list stays.
    pub fn record_cloud_error(&self, error: &str) {
        self.update_cloud_status(|s| {
            s.last_attempt_unix = Some(unix_now());
            s.last_error = Some(error.to_owned());
            s.errors += 1;
        });
    }

    /// The refresh interval, as `status` shows it.
    pub fn set_cloud_refresh_interval(&self, every: Duration) {
        self.update_cloud_status(|s| s.refresh_interval_secs = every.as_secs());
    }

    /// Makes a cloud answer the cloud's part of the list: checked whole (an empty answer or one
    /// that allows everyone without `allow_everyone` changes nothing), then maps (no gap: the
    /// filter adds before it removes), then `cloud-cidrs` in the state dir, then readers.
    pub fn apply_cloud(
        &self,
        answer: CloudAnswer,
        allow_everyone: bool,
    ) -> Result<CloudOutcome, StoreError> {
        let result = self.apply_cloud_inner(answer, allow_everyone);
        if let Err(e) = &result {
            self.record_cloud_error(&e.to_string());
        }
        result
    }

    fn apply_cloud_inner(
        &self,
        answer: CloudAnswer,
        allow_everyone: bool,
    ) -> Result<CloudOutcome, StoreError> {
        let CloudAnswer {
            provider,
            list,
            warnings,
        } = answer;
        if list.is_empty() {
            return Err(StoreError::EmptyCloudAnswer { provider });
        }
        if !allow_everyone && let Some(net) = list.iter().find(|n| n.prefix_len() == 0) {
            return Err(StoreError::EveryoneFromCloud { provider, net });
        }
        let mut current = self.lock_current();
        let lock_path = self.state_dir.join(LOCK_FILE);
        let _lock = fsutil::lock_exclusive(&lock_path, LOCK_TIMEOUT)
            .map_err(|e| lock_error(e, &lock_path))?;
        let now = unix_now();
        let before = current.effective();
        let recorded = cloud_state::Recorded {
            provider,
            fetched_unix: now,
            list,
        };
        let after = effective(&current.list, Some(&recorded));
        after.check_capacity(self.capacity.load(Ordering::Relaxed))?;
        if after != before
            && let Some(sink) = self.sink()
        {
            let mut maps = sink.blocking_lock();
            if let Err(reason) = maps.load_cidrs(&after) {
                self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                let reason = reason.to_string();
                return Err(match maps.load_cidrs(&before) {
                    Ok(()) => StoreError::MapsRestored {
                        reason,
                        revision: current.revision,
                    },
                    Err(e) => StoreError::MapsInconsistent {
                        reason,
                        restore: format!("maps: {e}"),
                        revision: current.revision,
                        path: cloud_state::path(&self.state_dir),
                    },
                });
            }
        }
        // The maps hold the answer. If it cannot be recorded, a restart uses the previous
        // record until the next refresh: logged and counted, the change itself stands.
        if let Err(e) = cloud_state::write(&self.state_dir, &recorded) {
            self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("{e}; a restart uses the previous answer until the next refresh");
        }
        let outcome = CloudOutcome {
            added: after.iter().filter(|n| !before.contains(n)).collect(),
            removed: before.iter().filter(|n| !after.contains(n)).collect(),
        };
        current.cloud = Some(recorded);
        self.publish(&current);
        self.update_cloud_status(|s| {
            s.provider = Some(provider);
            s.fetched_unix = Some(now);
            s.last_attempt_unix = Some(now);
            s.last_error = None;
            s.warnings = warnings;
        });
        if !outcome.added.is_empty() || !outcome.removed.is_empty() {
            self.stats.last_apply_unix.store(now, Ordering::Relaxed);
            tracing::info!(
                %provider,
                added = ?outcome.added,
                removed = ?outcome.removed,
                "the cloud's ranges changed; the list in force follows"
            );
        }
        Ok(outcome)
    }

    fn published(&self) -> Published {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `current` what readers see.
    fn publish(&self, current: &Current) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Published::of(current);
    }

    /// The file's list from its text: with `[cloud]` it may hold no CIDR.
    fn parse_file_text(&self, text: &str) -> Result<(CidrList, Vec<cidr::Normalised>), CidrError> {
        if self.cloud {
            CidrList::from_file_text_maybe_empty(text)
        } else {
            CidrList::from_file_text(text)
        }
    }

    /// The checks a list of the file passes (with `[cloud]` it may be empty).
    fn validate_file_list(&self, list: &CidrList) -> Result<(), CidrError> {
        if self.cloud {
            list.check_capacity(serve_guard_common::trie::MAX_CIDRS_PER_FAMILY)
        } else {
            list.validate()
        }
    }

    /// The file's text; with `[cloud]` a missing file reads as empty.
    fn read_file_text(&self) -> Result<String, StoreError> {
        match fsutil::read_to_string(&self.cidr_file) {
            Err(e) if self.cloud && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            other => other.map_err(StoreError::io("read", &self.cidr_file)),
        }
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Current> {
        // A panic mid-change leaves `current` as it was before the change (it is only assigned
        // once everything succeeded), so a poisoned lock still guards a consistent value.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change off the async runtime (file I/O, fsync, map updates). The change runs to
    /// its end even if the caller goes away, so it is never half-applied.
    pub async fn apply(
        self: &Arc<Self>,
        change: Change,
        if_revision: Option<u64>,
    ) -> Result<Outcome, StoreError> {
        self.apply_with(change, if_revision, false).await
    }

    /// [`Store::apply`]; `allow_everyone` lets the change bring in an entry that allows every
    /// source (`--allow-everyone`).
    pub async fn apply_with(
        self: &Arc<Self>,
        change: Change,
        if_revision: Option<u64>,
        allow_everyone: bool,
    ) -> Result<Outcome, StoreError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            store.apply_blocking_with(change, if_revision, allow_everyone)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// [`Store::apply`] for callers that are not async (and for tests).
    pub fn apply_blocking(
        &self,
        change: Change,
        if_revision: Option<u64>,
    ) -> Result<Outcome, StoreError> {
        self.apply_blocking_with(change, if_revision, false)
    }

    /// [`Store::apply_with`] for callers that are not async.
    pub fn apply_blocking_with(
        &self,
        change: Change,
        if_revision: Option<u64>,
        allow_everyone: bool,
    ) -> Result<Outcome, StoreError> {
        let mut current = self.lock_current();
        let lock_path = self.state_dir.join(LOCK_FILE);
        let _lock = fsutil::lock_exclusive(&lock_path, LOCK_TIMEOUT)
            .map_err(|e| lock_error(e, &lock_path))?;

        // Catch up with the disk first: an edit the watcher has not applied yet, or a change
        // another process (the CLI while no agent ran) committed. A change never overwrites an
        // edit it has not seen, and `if_revision` is checked against the caught-up revision.
        let on_disk = self.read_file_text()?;
        let synced = match self.parse_file_text(&on_disk) {
            Ok((list, warnings)) => self.sync(&mut current, list, &warnings)?,
            Err(error) if change == Change::Reload => {
                return Err(StoreError::InvalidFile {
                    path: self.cidr_file.clone(),
                    error,
                });
            }
            Err(e) => {
                tracing::warn!(file = %self.cidr_file.display(), "the file on disk is invalid ({e}); the change replaces it");
                None
            }
        };
        if change == Change::Reload {
            return Ok(synced.unwrap_or_else(|| self.unchanged(&current, Vec::new())));
        }

        if let Some(expected) = if_revision
            && expected != current.revision
        {
            return Err(StoreError::Stale {
                expected,
                current: current.revision,
            });
        }

        let (next, warnings) = match &change {
            Change::Add(args) => {
                let parsed = cidr::parse_args(args.iter().map(String::as_str))?;
                let mut next = current.list.clone();
                for net in parsed.networks {
                    next.insert(net);
                }
                self.validate_file_list(&next)?;
                (next, parsed.warnings)
            }
            Change::Remove(args) => {
                let parsed = cidr::parse_args(args.iter().map(String::as_str))?;
                let mut next = current.list.clone();
                for (i, net) in parsed.networks.iter().enumerate() {
                    if !current.list.contains(net) {
                        return Err(StoreError::NotPresent {
                            at: cidr::Location::Argument(i + 1),
                            net: *net,
                        });
                    }
                    next.remove(net);
                }
                self.validate_file_list(&next)?;
                (next, parsed.warnings)
            }
            Change::Replace(text) => self.parse_file_text(text)?,
            Change::Reload => unreachable!("handled above"),
        };
        if !allow_everyone && let Some(net) = brings_in_everyone(&current.list, &next) {
            return Err(StoreError::EveryoneByChange { net });
        }
        let warnings = report_warnings(&warnings);
        if next == current.list {
            return Ok(self.unchanged(&current, warnings));
        }
        let revision = current.revision + 1;
        self.commit(&mut current, next, warnings, revision, Some(on_disk))
    }

    /// Makes the in-memory list and the maps follow the file on disk. `None` when they already
    /// did.
    fn sync(
        &self,
        current: &mut Current,
        disk: CidrList,
        warnings: &[cidr::Normalised],
    ) -> Result<Option<Outcome>, StoreError> {
        let recorded = read_revision(&self.state_dir.join(REVISION_FILE))?;
        // Committed by another process: take its revision rather than counting a new one.
        let committed_elsewhere = recorded
            .as_ref()
            .filter(|(rev, list)| *list == disk && *rev > current.revision)
            .map(|(rev, _)| *rev);
        if disk == current.list {
            if let Some(rev) = committed_elsewhere {
                current.revision = rev;
                self.publish(current);
            }
            return Ok(None);
        }
        // Another process's committed change passed its own check; an edit of the file needs
        // the config's consent.
        if committed_elsewhere.is_none()
            && !self.file_allows_everyone.load(Ordering::Relaxed)
            && let Some(net) = brings_in_everyone(&current.list, &disk)
        {
            return Err(StoreError::EveryoneInFile {
                path: self.cidr_file.clone(),
                net,
            });
        }
        let warnings = report_warnings(warnings);
        let outcome = match committed_elsewhere {
            Some(rev) => self.commit(current, disk, warnings, rev, None)?,
            None => {
                tracing::info!(file = %self.cidr_file.display(), "applying an edit of the file");
                let recorded_rev = recorded.map_or(0, |(rev, _)| rev);
                let rev = current.revision.max(recorded_rev) + 1;
                self.commit(current, disk, warnings, rev, None)?
            }
        };
        Ok(Some(outcome))
    }

    fn unchanged(&self, current: &Current, warnings: Vec<String>) -> Outcome {
        Outcome {
            revision: current.revision,
            changed: false,
            ipv4: current.list.v4().len(),
            ipv6: current.list.v6().len(),
            added: Vec::new(),
            removed: Vec::new(),
            warnings,
            applied_to_maps: self.sink().is_some(),
        }
    }

    fn sink(&self) -> Option<SharedSink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `next` the list at `revision`: file, maps, revision record. `rewrite` holds the
    /// file's current bytes when the file must be rewritten (and restored if the maps refuse);
    /// `None` when the file already holds `next`.
    fn commit(
        &self,
        current: &mut Current,
        next: CidrList,
        warnings: Vec<String>,
        revision: u64,
        rewrite: Option<String>,
    ) -> Result<Outcome, StoreError> {
        let next_effective = effective(&next, current.cloud.as_ref());
        next_effective.check_capacity(self.capacity.load(Ordering::Relaxed))?;
        let sink = self.sink();
        let mut outcome = Outcome {
            revision,
            changed: true,
            ipv4: next.v4().len(),
            ipv6: next.v6().len(),
            added: next.iter().filter(|n| !current.list.contains(n)).collect(),
            removed: current.list.iter().filter(|n| !next.contains(n)).collect(),
            warnings,
            applied_to_maps: sink.is_some(),
        };
        if let Some(old) = &rewrite {
            let text = edit_file_text(old, &next);
            fsutil::write_atomic(&self.cidr_file, text.as_bytes())
                .map_err(StoreError::io("write", &self.cidr_file))?;
        }

        if let Some(sink) = &sink {
            let mut maps = sink.blocking_lock();
            if let Err(reason) = maps.load_cidrs(&next_effective) {
                self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
                let reason = reason.to_string();
                tracing::error!(%reason, "updating the XDP maps failed; restoring revision {}", current.revision);
                let mut restore = Vec::new();
                if let Err(e) = maps.load_cidrs(&current.effective()) {
                    restore.push(format!("maps: {e}"));
                }
                if let Some(old) = &rewrite
                    && let Err(e) = fsutil::write_atomic(&self.cidr_file, old.as_bytes())
                {
                    restore.push(format!("{}: {e}", self.cidr_file.display()));
                }
                return Err(if restore.is_empty() {
                    StoreError::MapsRestored {
                        reason,
                        revision: current.revision,
                    }
                } else {
                    StoreError::MapsInconsistent {
                        reason,
                        restore: restore.join("; "),
                        revision: current.revision,
                        path: self.cidr_file.clone(),
                    }
                });
            }
        }

        // File and maps hold `next`. If recording the revision fails, the next start sees a list
        // that differs from the recorded one and counts it as a new revision, so it stays
        // monotonic; the change itself stands.
        if let Err(e) = write_revision(&self.state_dir.join(REVISION_FILE), revision, &next) {
            tracing::error!("{e}; the revision is recounted at the next start");
        }
        current.list = next;
        current.revision = revision;
        self.publish(current);
        outcome.revision = revision;
        self.stats
            .last_apply_unix
            .store(unix_now(), Ordering::Relaxed);
        tracing::info!(
            revision,
            ipv4 = outcome.ipv4,
            ipv6 = outcome.ipv6,
            added = outcome.added.len(),
            removed = outcome.removed.len(),
            maps = outcome.applied_to_maps,
            "CIDR list changed"
        );
        Ok(outcome)
    }

    /// Re-reads the file after an edit on disk, through the same serialised path. An invalid file
    /// is logged (with its line) and counted; the old list stays.
    pub async fn reload_from_disk(self: &Arc<Self>) -> Result<Outcome, StoreError> {
        let result = self.apply(Change::Reload, None).await;
        if let Err(e) = &result {
            if !matches!(
                e,
                StoreError::MapsRestored { .. } | StoreError::MapsInconsistent { .. }
            ) {
                self.stats.apply_errors.fetch_add(1, Ordering::Relaxed);
            }
            tracing::error!("the edited CIDR file was not applied, the old list stays: {e}");
        }
        result
    }
}

/// Refuses a CIDR file that brings in an entry allowing every source since the list this
/// state dir last recorded, unless the config allows it (`allow_everyone`). The agent checks
/// this at start, before it touches the kernel; the watcher and the store check later edits.
pub fn check_file_consent(
    cidr_file: &Path,
    state_dir: &Path,
    list: &CidrList,
    allow_everyone: bool,
) -> Result<(), StoreError> {
    if allow_everyone {
        return Ok(());
    }
    let recorded = read_revision(&state_dir.join(REVISION_FILE))?
        .map(|(_, list)| list)
        .unwrap_or_default();
    match brings_in_everyone(&recorded, list) {
        Some(net) => Err(StoreError::EveryoneInFile {
            path: cidr_file.to_owned(),
            net,
        }),
        None => Ok(()),
    }
}

/// An entry of `next` that allows every source (`0.0.0.0/0`, `::/0`) and that `current` lacks.
/// Keeping one that is already there needs no new consent.
pub fn brings_in_everyone(current: &CidrList, next: &CidrList) -> Option<IpNet> {
    next.iter()
        .find(|net| net.prefix_len() == 0 && !current.contains(net))
}

/// The file text for `next`, made from the file's `old` text so that config management and the
/// CLI can share the file: every line stays in its place (comments, blank lines, the CIDRs that
/// remain), the lines of removed CIDRs go, and the added CIDRs are appended in list order. An
/// `old` text that does not parse (the change replaces a broken file) is not kept.
pub fn edit_file_text(old: &str, next: &CidrList) -> String {
    if cidr::parse_file(old).is_err() {
        return next.to_file_text(FILE_HEADER);
    }
    let mut out = String::with_capacity(old.len());
    let mut present = CidrList::default();
    for line in old.lines() {
        let content = line.split('#').next().unwrap_or_default().trim();
        if !content.is_empty()
            && let Ok((net, _)) = cidr::parse_entry(content)
        {
            if !next.contains(&net) {
                continue;
            }
            present.insert(net);
        }
        out.push_str(line);
        out.push('\n');
    }
    for net in next.iter().filter(|net| !present.contains(net)) {
        out.push_str(&net.to_string());
        out.push('\n');
    }
    out
}

fn report_warnings(warnings: &[cidr::Normalised]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| {
            tracing::warn!("{w}");
            w.to_string()
        })
        .collect()
}

fn lock_error(e: io::Error, path: &Path) -> StoreError {
    if e.kind() == io::ErrorKind::TimedOut {
        StoreError::LockTimeout {
            path: path.to_owned(),
        }
    } else {
        StoreError::Io {
            action: "lock",
            path: path.to_owned(),
            source: e,
        }
    }
}

/// Reads and validates a CIDR file.
pub fn read_list(path: &Path) -> Result<CidrList, StoreError> {
    read_list_with(path, false)
}

/// [`read_list`]; with `cloud`, a missing file or one without a CIDR is an empty list.
fn read_list_with(path: &Path, cloud: bool) -> Result<CidrList, StoreError> {
    let text = match fsutil::read_to_string(path) {
        Err(e) if cloud && e.kind() == io::ErrorKind::NotFound => String::new(),
        other => other.map_err(StoreError::io("read", path))?,
    };
    let parsed = if cloud {
        CidrList::from_file_text_maybe_empty(&text)
    } else {
        CidrList::from_file_text(&text)
    };
    let (list, warnings) = parsed.map_err(|error| StoreError::InvalidFile {
        path: path.to_owned(),
        error,
    })?;
    for w in warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(list)
}

fn read_revision(path: &Path) -> Result<Option<(u64, CidrList)>, StoreError> {
    let text = match fsutil::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let corrupt = |reason: String| StoreError::CorruptRevision {
        path: path.to_owned(),
        reason,
    };
    let revision = text
        .lines()
        .find_map(|l| l.strip_prefix(REVISION_PREFIX))
        .ok_or_else(|| corrupt("no `revision N` line".into()))?
        .trim()
        .parse::<u64>()
        .map_err(|e| corrupt(format!("revision: {e}")))?;
    // The list lines follow the revision line; the revision line itself is not a CIDR.
    let list_text: String = text
        .lines()
        .filter(|l| !l.starts_with(REVISION_PREFIX))
        .flat_map(|l| [l, "\n"])
        .collect();
    // With `[cloud]` the file's list may be empty.
    let (list, _) =
        CidrList::from_file_text_maybe_empty(&list_text).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some((revision, list)))
}

fn write_revision(path: &Path, revision: u64, list: &CidrList) -> Result<(), StoreError> {
    let text = format!(
        "{}{REVISION_PREFIX}{revision}\n",
        list.to_file_text(REVISION_HEADER)
    );
    fsutil::write_atomic(path, text.as_bytes()).map_err(StoreError::io("write", path))
}

#[cfg(test)]
mod tests;

impl Published {
    fn of(current: &Current) -> Published {
        let file = Arc::new(current.list.clone());
        match &current.cloud {
            None => Published {
                list: Arc::clone(&file),
                file,
                cloud: None,
                revision: current.revision,
            },
            Some(cloud) => Published {
                list: Arc::new(current.effective()),
                file,
                cloud: Some(Arc::new(cloud.list.clone())),
                revision: current.revision,
            },
        }
    }
}

fn listing_of(published: &Published, cloud: Option<CloudStatus>) -> Listing {
    Listing {
        revision: published.revision,
        ipv4: published.list.v4().len(),
        ipv6: published.list.v6().len(),
        cidrs: published.list.iter().collect(),
        file: cloud.as_ref().map(|_| published.file.iter().collect()),
        cloud: cloud.map(|status| CloudListing {
            status,
            cidrs: published
                .cloud
                .as_deref()
                .map(|l| l.iter().collect())
                .unwrap_or_default(),
        }),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
