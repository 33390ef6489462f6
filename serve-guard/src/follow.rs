//! Follows a file on disk (the CIDR file, the token file) and re-reads it after every change: the
//! CIDR file through the store's serialised path, the token file through its token source.
//!
//! The watch is on the file's directory, not the file: editors that write a temp file and rename
//! it over the original, Ansible's atomic copy, and Kubernetes ConfigMap mounts (which swap the
//! `..data` symlink to a new timestamped directory) all replace the inode, and a watch on the old
//! inode would go quiet. Any event in the directory triggers a re-read after a short debounce; the
//! store and the token source ignore a re-read that finds what they already have (our own writes
//! included).

#![allow(unsafe_code, reason = "registering inotify's fd with tokio")]

use crate::store::Store;
use crate::token::TokenSource;
use inotify::{EventMask, Inotify, WatchMask};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Quiet time after the last event before the file is re-read: an editor's write, rename and
/// chmod arrive as one burst.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a burst of events may delay a re-read (a directory written to without pause).
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// How often the watcher retries when the directory itself went away.
pub const REWATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Room for a burst of events per read (each is 16 bytes plus the name).
const EVENT_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start inotify: {0}")]
    Init(io::Error),
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: io::Error },
    #[error("reading inotify events failed: {0}")]
    Read(io::Error),
}

fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// The directory to watch for `file`.
pub fn watched_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Re-reads the followed file; logs and counts its own errors (a bad edit keeps what is in force).
type Reload = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A started watch: the directory is watched from the moment this returns, so an edit made after
/// [`Watcher::start`] is never missed.
pub struct Watcher {
    fd: AsyncFd<Inotify>,
    dir: PathBuf,
    /// What the file is, for the log.
    what: &'static str,
    reload: Reload,
}

impl Watcher {
    /// Follows the CIDR file: every edit goes through the store.
    pub fn start(store: Arc<Store>) -> Result<Self, WatchError> {
        let file = store.cidr_file().to_owned();
        Self::follow(
            &file,
            "CIDR file",
            Box::new(move || {
                let store = Arc::clone(&store);
                Box::pin(async move {
                    let _ = store.reload_from_disk().await;
                })
            }),
        )
    }

    /// Follows the token file: every edit is re-read by the token source.
    pub fn start_tokens(source: Arc<TokenSource>) -> Result<Self, WatchError> {
        let file = source.path().to_owned();
        Self::follow(
            &file,
            "token file",
            Box::new(move || {
                let source = Arc::clone(&source);
                Box::pin(async move {
                    let _ = tokio::task::spawn_blocking(move || source.reload()).await;
                })
            }),
        )
    }

    fn follow(file: &Path, what: &'static str, reload: Reload) -> Result<Self, WatchError> {
        let dir = watched_dir(file);
        let inotify = Inotify::init().map_err(WatchError::Init)?;
        inotify
            .watches()
            .add(&dir, mask())
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
        // SAFETY: `Inotify` owns its descriptor, closes it only on drop, and returns the same one
        // from every `as_raw_fd`; the AsyncFd owns the `Inotify`, so both live and die together.
        let fd = unsafe { AsyncFd::register_with_interest(inotify, tokio::io::Interest::READABLE) }
            .map_err(|e| WatchError::Init(e.into()))?;
        tracing::info!(dir = %dir.display(), file = %file.display(), "watching the {what}");
        Ok(Watcher {
            fd,
            dir,
            what,
            reload,
        })
    }

    /// Applies edits until `shutdown` resolves.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), WatchError> {
        let mut buffer = vec![0u8; EVENT_BUFFER_BYTES];
        tokio::pin!(shutdown);
        loop {
            let lost_watch = tokio::select! {
                () = &mut shutdown => return Ok(()),
                read = self.next_burst(&mut buffer) => read?,
            };
            // Re-read even when the directory went away: the missing file is then reported and
            // what is in force stays.
            (self.reload)().await;
            if lost_watch {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = self.rewatch() => {}
                }
                (self.reload)().await;
            }
        }
    }

    /// Waits for an event, then for the burst to settle. True if the directory's watch ended
    /// (the directory was deleted or moved).
    async fn next_burst(&mut self, buffer: &mut [u8]) -> Result<bool, WatchError> {
        let mut lost = self.read_events(buffer).await?;
        let start = Instant::now();
        loop {
            let quiet_until = Instant::now() + DEBOUNCE;
            let deadline = quiet_until.min(start + DEBOUNCE_MAX);
            match tokio::time::timeout_at(deadline, self.read_events(buffer)).await {
                Ok(more) => lost |= more?,
                Err(_) => return Ok(lost),
            }
            if Instant::now() >= start + DEBOUNCE_MAX {
                return Ok(lost);
            }
        }
    }

    /// Reads at least one event. True if one of them says the watch ended.
    async fn read_events(&mut self, buffer: &mut [u8]) -> Result<bool, WatchError> {
        loop {
            let mut guard = self.fd.readable_mut().await.map_err(WatchError::Read)?;
            let read = guard.try_io(|inner| {
                let events = inner.get_mut().read_events(buffer)?;
                let mut lost = false;
                let mut count = 0usize;
                for event in events {
                    count += 1;
                    tracing::trace!(name = ?event.name, mask = ?event.mask, "watched directory event");
                    if event.mask.intersects(
                        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                    ) {
                        lost = true;
                    }
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        tracing::warn!("inotify queue overflowed; re-reading the watched file");
                    }
                }
                Ok((count, lost))
            });
            match read {
                Ok(Ok((count, lost))) if count > 0 => return Ok(lost),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(WatchError::Read(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Watches the directory again once it exists again (it was deleted or moved away).
    async fn rewatch(&mut self) {
        tracing::error!(dir = %self.dir.display(), "the {}'s directory went away; what is in force stays and the agent waits for the directory to come back", self.what);
        let mut tick = tokio::time::interval(REWATCH_INTERVAL);
        loop {
            tick.tick().await;
            match self.fd.get_ref().watches().add(&self.dir, mask()) {
                Ok(_) => {
                    tracing::info!(dir = %self.dir.display(), "watching the {}'s directory again", self.what);
                    return;
                }
                Err(e) => tracing::debug!("re-watching {}: {e}", self.dir.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Change;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Bound on every wait for the watcher to pick an edit up.
    const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
    const POLL: Duration = Duration::from_millis(10);

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sg-watch-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("etc")).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Starts store + watcher on `cidr_file`; the watcher stops when the sender drops.
    fn start(t: &TempDir, cidr_file: &Path) -> (Arc<Store>, tokio::sync::oneshot::Sender<()>) {
        let store = Arc::new(Store::open(cidr_file, &t.0.join("state")).unwrap());
        let watcher = Watcher::start(store.clone()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(watcher.run(async move {
            let _ = stopped.await;
        }));
        (store, stop)
    }

    async fn wait_for_revision(store: &Store, revision: u64) {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while store.revision() < revision {
            assert!(
                Instant::now() < deadline,
                "revision {revision} not reached (at {})",
                store.revision()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn nets(store: &Store) -> Vec<String> {
        store.list().iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn applies_an_edit_by_rename_and_ignores_our_own_writes() {
        let t = TempDir::new();
        let file = t.0.join("etc/cidrs");
        std::fs::write(&file, "10.0.0.0/8\n").unwrap();
        let (store, _stop) = start(&t, &file);

        // The way editors and Ansible write: temp file, then rename over the original.
        let tmp = t.0.join("etc/.cidrs.swp");
        std::fs::write(&tmp, "10.0.0.0/8\n198.18.0.0/15\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        wait_for_revision(&store, 2).await;
        assert_eq!(nets(&store), ["10.0.0.0/8", "198.18.0.0/15"]);

        // Our own write is seen by the watcher but makes no second revision. A later external
        // edit gets exactly the next revision, so nothing was counted in between.
        let out = store
            .apply(Change::Add(vec!["fd00::/8".into()]), None)
            .await
            .unwrap();
        assert_eq!(out.revision, 3);
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(store.revision(), 3);
        std::fs::write(&file, "fd00::/8\n").unwrap();
        wait_for_revision(&store, 4).await;
        assert_eq!(nets(&store), ["fd00::/8"]);
    }

    #[tokio::test]
    async fn applies_a_configmap_style_symlink_swap() {
        let t = TempDir::new();
        let mount = t.0.join("etc");
        // What the kubelet lays out: cidrs -> ..data/cidrs, ..data -> ..<timestamp>.
        let first = mount.join("..2026_11_21_00_00_00.1");
        std::fs::create_dir(&first).unwrap();
        std::fs::write(first.join("cidrs"), "10.0.0.0/8\n").unwrap();
        std::os::unix::fs::symlink(first.file_name().unwrap(), mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/cidrs", mount.join("cidrs")).unwrap();
        let (store, _stop) = start(&t, &mount.join("cidrs"));

        let second = mount.join("..2026_11_21_00_01_00.2");
        std::fs::create_dir(&second).unwrap();
        std::fs::write(second.join("cidrs"), "172.16.0.0/12\n").unwrap();
        std::os::unix::fs::symlink(second.file_name().unwrap(), mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        std::fs::remove_dir_all(&first).unwrap();

        wait_for_revision(&store, 2).await;
        assert_eq!(nets(&store), ["172.16.0.0/12"]);
    }

    #[tokio::test]
    async fn an_invalid_edit_keeps_the_old_list_until_fixed() {
        let t = TempDir::new();
        let file = t.0.join("etc/cidrs");
        std::fs::write(&file, "10.0.0.0/8\n").unwrap();
        let (store, _stop) = start(&t, &file);

        std::fs::write(&file, "10.0.0.0/8\n10.0.0.0/99\n").unwrap();
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while store.stats().apply_errors.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the invalid edit was not noticed"
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(store.revision(), 1);
        assert_eq!(nets(&store), ["10.0.0.0/8"]);

        std::fs::write(&file, "10.0.0.0/8\n10.99.0.0/16\n").unwrap();
        wait_for_revision(&store, 2).await;
        assert_eq!(nets(&store), ["10.0.0.0/8", "10.99.0.0/16"]);
    }

    #[tokio::test]
    async fn follows_the_token_file_through_a_secret_style_swap() {
        use crate::token::TokenSource;
        use std::os::unix::fs::PermissionsExt;
        const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let t = TempDir::new();
        let mount = t.0.join("etc");
        let secret = |name: &str, text: &str| {
            let dir = mount.join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("token"), text).unwrap();
            std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o440))
                .unwrap();
            std::os::unix::fs::symlink(name, mount.join("..data_tmp")).unwrap();
            std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        };
        secret("..1", &format!("{A}\n"));
        std::os::unix::fs::symlink("..data/token", mount.join("token")).unwrap();
        let source = Arc::new(TokenSource::open(&mount.join("token")).unwrap());
        let watcher = Watcher::start_tokens(Arc::clone(&source)).unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(watcher.run(async move {
            let _ = stopped.await;
        }));
        let mut rx = source.subscribe();

        secret("..2", &format!("{B}\n{A}\n"));
        tokio::time::timeout(APPLY_TIMEOUT, rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update().len(), 2);

        // An invalid edit is counted and changes nothing; the next valid one applies.
        secret("..3", "# emptied by mistake\n");
        let deadline = Instant::now() + APPLY_TIMEOUT;
        while source.reload_errors() == 0 {
            assert!(
                Instant::now() < deadline,
                "the invalid edit was not noticed"
            );
            tokio::time::sleep(POLL).await;
        }
        assert!(rx.borrow().matches(A.as_bytes()));
        secret("..4", &format!("{B}\n"));
        tokio::time::timeout(APPLY_TIMEOUT, rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(!rx.borrow().matches(A.as_bytes()));
        assert!(rx.borrow().matches(B.as_bytes()));
    }
}
