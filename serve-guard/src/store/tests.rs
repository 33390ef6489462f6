//! Store tests that need no kernel: revisions, atomic writes, all-or-nothing, concurrency. The
//! maps are stood in for by a sink that records what it was given (the real maps are exercised by
//! tests/tests/filter/live_cidr.rs).

use super::*;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::AtomicUsize;

/// A fresh directory removed on drop, even when the test panics.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sg-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs_remove(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn cidr_file(&self) -> PathBuf {
        self.0.join("cidrs.txt")
    }
    fn state_dir(&self) -> PathBuf {
        self.0.join("state")
    }
    fn write(&self, text: &str) {
        std::fs::write(self.cidr_file(), text).unwrap();
    }
    fn read(&self) -> String {
        std::fs::read_to_string(self.cidr_file()).unwrap()
    }
    fn open(&self) -> Arc<Store> {
        Arc::new(Store::open(&self.cidr_file(), &self.state_dir()).unwrap())
    }
}

fn fs_remove(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs_remove(&self.0);
    }
}

#[derive(Default)]
struct RecordingSink {
    loads: Vec<CidrList>,
    fail_next: bool,
}

impl CidrSink for RecordingSink {
    fn load_cidrs(
        &mut self,
        list: &CidrList,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if std::mem::take(&mut self.fail_next) {
            return Err("map full (test)".into());
        }
        self.loads.push(list.clone());
        Ok(())
    }
}

fn attach(store: &Store) -> Arc<tokio::sync::Mutex<RecordingSink>> {
    let sink = Arc::new(tokio::sync::Mutex::new(RecordingSink::default()));
    store.attach_sink(sink.clone());
    sink
}

fn nets(list: &CidrList) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

fn add(cidrs: &[&str]) -> Change {
    Change::Add(cidrs.iter().map(|s| s.to_string()).collect())
}

fn remove(cidrs: &[&str]) -> Change {
    Change::Remove(cidrs.iter().map(|s| s.to_string()).collect())
}

#[test]
fn revision_starts_at_one_and_survives_reopening() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    assert_eq!(t.open().revision(), FIRST_REVISION);
    assert_eq!(
        t.open().revision(),
        FIRST_REVISION,
        "same list, same revision"
    );

    let store = t.open();
    let out = store.apply_blocking(add(&["172.16.0.0/12"]), None).unwrap();
    assert_eq!(out.revision, 2);
    drop(store);
    assert_eq!(t.open().revision(), 2, "the revision survives a restart");

    // Edited while nothing ran: the next open counts it as a new revision.
    t.write("10.0.0.0/8\n192.168.0.0/16\n");
    let store = t.open();
    assert_eq!(store.revision(), 3);
    assert_eq!(nets(&store.list()), ["10.0.0.0/8", "192.168.0.0/16"]);
}

#[test]
fn a_comment_only_edit_is_not_a_revision() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    t.open();
    t.write("# peered VPC soon\n10.0.0.0/8 # main VPC\n");
    assert_eq!(t.open().revision(), FIRST_REVISION);
}

#[test]
fn add_remove_replace_write_the_file_and_the_maps() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    let sink = attach(&store);

    let out = store
        .apply_blocking(add(&["fd00::/8", "172.16.0.0/12", "10.0.0.0/8"]), None)
        .unwrap();
    assert_eq!((out.revision, out.ipv4, out.ipv6), (2, 2, 1));
    assert!(out.changed && out.applied_to_maps);
    assert_eq!(out.added.len(), 2, "10.0.0.0/8 was there already");
    let (on_disk, _) = CidrList::from_file_text(&t.read()).unwrap();
    assert_eq!(on_disk, store.list());
    assert_eq!(t.read(), "10.0.0.0/8\n172.16.0.0/12\nfd00::/8\n");

    let out = store.apply_blocking(remove(&["10.0.0.0/8"]), None).unwrap();
    assert_eq!((out.revision, out.ipv4), (3, 1));
    assert_eq!(out.removed, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);

    let out = store
        .apply_blocking(Change::Replace("# new\n198.18.0.0/15\n".into()), None)
        .unwrap();
    assert_eq!((out.revision, out.ipv4, out.ipv6), (4, 1, 0));
    assert_eq!(nets(&store.list()), ["198.18.0.0/15"]);

    let loads = &sink.blocking_lock().loads;
    assert_eq!(loads.len(), 3, "one map update per change");
    assert_eq!(loads.last().unwrap(), &store.list());
}

#[test]
fn changes_keep_the_operators_comments_and_line_order() {
    let t = TempDir::new();
    // What stays through every change below.
    let head = "# managed by Ansible, edited by hand too\n10.0.0.0/8   # main VPC\n\n# peers\n";
    let file = format!("{head}192.168.0.0/16 # peer B\n172.16.0.0/12\n");
    t.write(&file);
    let store = t.open();
    attach(&store);

    store
        .apply_blocking(add(&["fd00::/8", "198.18.0.0/15"]), None)
        .unwrap();
    assert_eq!(
        t.read(),
        format!("{file}198.18.0.0/15\nfd00::/8\n"),
        "new CIDRs are appended, nothing else moves"
    );
    store
        .apply_blocking(remove(&["192.168.0.0/16", "fd00::/8"]), None)
        .unwrap();
    assert_eq!(t.read(), format!("{head}172.16.0.0/12\n198.18.0.0/15\n"));
    // Replace keeps the lines of the CIDRs that stay and the comments, in place.
    store
        .apply_blocking(
            Change::Replace("198.18.0.0/15\n10.0.0.0/8\n10.99.0.0/16\n".into()),
            None,
        )
        .unwrap();
    assert_eq!(t.read(), format!("{head}198.18.0.0/15\n10.99.0.0/16\n"));
    let (on_disk, _) = CidrList::from_file_text(&t.read()).unwrap();
    assert_eq!(on_disk, store.list());
}

#[test]
fn a_change_that_changes_nothing_keeps_the_revision() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    let sink = attach(&store);
    let before = t.read();
    let out = store.apply_blocking(add(&["10.1.2.3/8"]), None).unwrap();
    assert!(!out.changed);
    assert_eq!(out.revision, FIRST_REVISION);
    assert_eq!(out.warnings.len(), 1, "host bits are still reported");
    assert!(out.warnings[0].contains("argument 1"), "{:?}", out.warnings);
    assert_eq!(t.read(), before, "the file is not rewritten");
    assert!(sink.blocking_lock().loads.is_empty());
}

/// Every bad change leaves the file bytes, the revision and the maps as they were.
#[test]
fn bad_input_changes_nothing() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    let sink = attach(&store);
    let before = t.read();

    let err = store
        .apply_blocking(add(&["172.16.0.0/12", "10.300.0.0/16", "fd00::/8"]), None)
        .unwrap_err();
    assert!(
        err.to_string().starts_with("argument 2: `10.300.0.0/16`"),
        "{err}"
    );
    assert!(err.is_client_error());

    let err = store
        .apply_blocking(
            Change::Replace("10.0.0.0/8\n\n192.168.0.0/33\n".into()),
            None,
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with("line 3: `192.168.0.0/33`"),
        "{err}"
    );

    let err = store
        .apply_blocking(Change::Replace("# nothing left\n".into()), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::Cidr(CidrError::Empty)), "{err}");

    let err = store
        .apply_blocking(remove(&["10.0.0.0/8"]), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::Cidr(CidrError::Empty)), "{err}");

    let err = store
        .apply_blocking(remove(&["10.0.0.0/8", "10.0.0.0/16"]), None)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "argument 2: 10.0.0.0/16 is not in the list, nothing was removed"
    );

    // The capacity the filter's maps hold (`max_cidrs`), here the smallest allowed.
    let capacity = serve_guard_common::trie::MIN_CIDRS_PER_FAMILY;
    store.set_capacity(capacity);
    let over: String = (0..=capacity)
        .map(|i| format!("{}/32\n", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let err = store
        .apply_blocking(Change::Replace(over), None)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Cidr(CidrError::Capacity { .. })),
        "{err}"
    );

    let err = store
        .apply_blocking(add(&["172.16.0.0/12"]), Some(FIRST_REVISION + 1))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the change was made against revision 2 but the list is at revision 1; nothing was changed (run `serve-guard cidr list` and retry)"
    );

    assert_eq!(t.read(), before);
    assert_eq!(store.revision(), FIRST_REVISION);
    assert!(
        sink.blocking_lock().loads.is_empty(),
        "the maps were not touched"
    );
    assert_eq!(t.open().revision(), FIRST_REVISION);
}

#[test]
fn if_revision_accepts_the_current_revision() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    let out = store
        .apply_blocking(add(&["fd00::/8"]), Some(FIRST_REVISION))
        .unwrap();
    assert_eq!(out.revision, FIRST_REVISION + 1);
}

#[test]
fn a_map_failure_restores_file_and_maps() {
    let t = TempDir::new();
    t.write("# hand written\n10.0.0.0/8\n");
    let store = t.open();
    let sink = attach(&store);
    let before = t.read();
    sink.blocking_lock().fail_next = true;

    let err = store.apply_blocking(add(&["fd00::/8"]), None).unwrap_err();
    assert!(
        matches!(err, StoreError::MapsRestored { revision: 1, .. }),
        "{err}"
    );
    assert_eq!(t.read(), before, "the old bytes are back");
    assert_eq!(store.revision(), FIRST_REVISION);
    assert_eq!(
        sink.blocking_lock().loads,
        vec![store.list()],
        "old list reloaded"
    );
    assert_eq!(store.stats().apply_errors.load(Ordering::Relaxed), 1);

    // The next change goes through normally.
    let out = store.apply_blocking(add(&["fd00::/8"]), None).unwrap();
    assert_eq!(out.revision, FIRST_REVISION + 1);
}

#[test]
fn reload_applies_an_edit_once_and_ignores_our_own_writes() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    let sink = attach(&store);

    // Our own write, seen again by the watcher: no second revision.
    store.apply_blocking(add(&["fd00::/8"]), None).unwrap();
    let out = store.apply_blocking(Change::Reload, None).unwrap();
    assert_eq!((out.changed, out.revision), (false, 2));

    // An operator's edit: applied, and the file keeps their comments.
    t.write("# ops\n10.0.0.0/8\n198.18.0.0/15\n");
    let out = store.apply_blocking(Change::Reload, None).unwrap();
    assert_eq!((out.changed, out.revision), (true, 3));
    assert_eq!(t.read(), "# ops\n10.0.0.0/8\n198.18.0.0/15\n");
    assert_eq!(sink.blocking_lock().loads.len(), 2);
}

#[test]
fn an_invalid_edit_on_disk_keeps_the_old_list() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    attach(&store);
    t.write("10.0.0.0/8\nbogus\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(store.reload_from_disk()).unwrap_err();
    assert!(err.to_string().contains("line 2: `bogus`"), "{err}");
    assert_eq!(nets(&store.list()), ["10.0.0.0/8"]);
    assert_eq!(store.revision(), FIRST_REVISION);
    assert_eq!(store.stats().apply_errors.load(Ordering::Relaxed), 1);
}

#[test]
fn an_unseen_edit_on_disk_is_folded_in_before_a_change() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    t.write("10.0.0.0/8\n172.16.0.0/12\n");
    // The caller saw revision 1, but the list changed under it: stale.
    let err = store
        .apply_blocking(add(&["fd00::/8"]), Some(FIRST_REVISION))
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale { current: 2, .. }), "{err}");
    let out = store.apply_blocking(add(&["fd00::/8"]), None).unwrap();
    assert_eq!(out.revision, 3);
    assert_eq!(
        nets(&store.list()),
        ["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"],
        "the edit on disk was not lost"
    );
}

#[test]
fn concurrent_changes_serialise_and_none_is_lost() {
    const WRITERS: u32 = 8;
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    // A second store on the same files stands in for another process (the offline CLI).
    let other = t.open();
    let handles: Vec<_> = (0..WRITERS)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            std::thread::spawn(move || {
                s.apply_blocking(add(&[&format!("198.18.{i}.0/24")]), None)
                    .unwrap()
            })
        })
        .collect();
    let mut revisions: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().unwrap().revision)
        .collect();
    revisions.sort();
    let expected: Vec<u64> = (2..2 + u64::from(WRITERS)).collect();
    assert_eq!(revisions, expected, "each change got its own revision");
    let (on_disk, _) = CidrList::from_file_text(&t.read()).unwrap();
    assert_eq!(on_disk.v4().len(), 1 + WRITERS as usize, "no change lost");
    assert_eq!(t.open().revision(), 1 + u64::from(WRITERS));
}

#[test]
fn atomic_write_keeps_mode_leaves_no_temp_file_and_follows_links() {
    let t = TempDir::new();
    let real = t.0.join("real.txt");
    std::fs::write(&real, "old\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = t.0.join("link.txt");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    fsutil::write_atomic(&link, b"new\n").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "new\n");
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let names: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
}

#[test]
fn state_dir_and_lock_are_private() {
    let t = TempDir::new();
    t.write("10.0.0.0/8\n");
    let store = t.open();
    store.apply_blocking(add(&["fd00::/8"]), None).unwrap();
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(t.state_dir()), 0o700);
    assert_eq!(mode(t.state_dir().join(LOCK_FILE)), 0o600);
}

#[test]
fn a_held_lock_times_out_with_a_clear_error() {
    let t = TempDir::new();
    let path = t.0.join("x.lock");
    let _held = fsutil::lock_exclusive(&path, LOCK_TIMEOUT).unwrap();
    let err = fsutil::lock_exclusive(&path, Duration::from_millis(20)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn allowing_every_source_needs_consent() {
    let dir = TempDir::new();
    dir.write("10.0.0.0/8\n");
    let store = dir.open();
    for change in [
        add(&["0.0.0.0/0"]),
        add(&["::/0"]),
        Change::Replace("10.0.0.0/8\n0.0.0.0/0\n".into()),
    ] {
        let e = store.apply_blocking(change, None).unwrap_err();
        assert!(matches!(e, StoreError::EveryoneByChange { .. }), "{e}");
        assert!(e.to_string().contains("--allow-everyone"), "{e}");
    }
    assert_eq!(nets(&store.list()), ["10.0.0.0/8"], "nothing changed");

    let done = store
        .apply_blocking_with(add(&["0.0.0.0/0"]), None, true)
        .unwrap();
    assert!(done.changed);
    // Already there: further changes need no new consent.
    store.apply_blocking(add(&["10.1.0.0/16"]), None).unwrap();
}

#[test]
fn an_edit_of_the_file_that_allows_everyone_needs_the_config_key() {
    let dir = TempDir::new();
    dir.write("10.0.0.0/8\n");
    let store = dir.open();
    dir.write("10.0.0.0/8\n::/0\n");
    let e = store.apply_blocking(Change::Reload, None).unwrap_err();
    assert!(matches!(e, StoreError::EveryoneInFile { .. }), "{e}");
    assert!(e.to_string().contains("allow_everyone = true"), "{e}");
    assert_eq!(nets(&store.list()), ["10.0.0.0/8"], "the old list stays");

    store.set_file_allows_everyone(true);
    assert!(store.apply_blocking(Change::Reload, None).unwrap().changed);

    // At start: refused against the recorded list unless the config allows it.
    let list = read_list(&dir.cidr_file()).unwrap();
    check_file_consent(&dir.cidr_file(), &dir.state_dir(), &list, false).unwrap();
    let other = TempDir::new();
    other.write("0.0.0.0/0\n");
    let list = read_list(&other.cidr_file()).unwrap();
    assert!(check_file_consent(&other.cidr_file(), &other.state_dir(), &list, false).is_err());
    check_file_consent(&other.cidr_file(), &other.state_dir(), &list, true).unwrap();
}

fn cloud_answer(cidrs: &[&str]) -> CloudAnswer {
    CloudAnswer {
        provider: Provider::Aws,
        list: cidrs.iter().fold(CidrList::default(), |mut l, c| {
            l.insert(c.parse().unwrap());
            l
        }),
        warnings: Vec::new(),
    }
}

#[test]
fn the_cloud_joins_the_file_and_survives_a_restart() {
    let dir = TempDir::new();
    // With [cloud], the CIDR file may be missing: the cloud gives the VPC's ranges.
    let store = Arc::new(Store::open_with(&dir.cidr_file(), &dir.state_dir(), true).unwrap());
    assert!(store.list().is_empty());
    let sink = attach(&store);
    store
        .apply_cloud(cloud_answer(&["10.0.0.0/16", "fd00::/56"]), false)
        .unwrap();
    assert_eq!(nets(&store.list()), ["10.0.0.0/16", "fd00::/56"]);
    // A file edit goes into the maps with the cloud's part; the file holds only its own.
    store
        .apply_blocking(add(&["192.168.0.0/24"]), None)
        .unwrap();
    assert_eq!(
        nets(sink.blocking_lock().loads.last().unwrap()),
        ["10.0.0.0/16", "192.168.0.0/24", "fd00::/56"]
    );
    assert!(!dir.read().contains("10.0.0.0/16"));
    let listing = store.listing();
    assert_eq!(listing.file, Some(vec!["192.168.0.0/24".parse().unwrap()]));
    assert_eq!(listing.cloud.as_ref().unwrap().cidrs.len(), 2);
    assert_eq!(store.summary().from_cloud, 2);

    // Empty, or allowing everyone: refused whole, counted, the list stays.
    let before = store.list();
    let e = store.apply_cloud(cloud_answer(&[]), false).unwrap_err();
    assert!(matches!(e, StoreError::EmptyCloudAnswer { .. }), "{e}");
    let e = store
        .apply_cloud(cloud_answer(&["10.0.0.0/16", "0.0.0.0/0"]), false)
        .unwrap_err();
    assert!(e.to_string().contains("0.0.0.0/0"), "{e}");
    assert_eq!(store.list(), before);
    assert_eq!(store.cloud_status().unwrap().errors, 2);

    // A shrinking answer applies; the file's entries stay.
    let outcome = store
        .apply_cloud(cloud_answer(&["10.0.0.0/16"]), false)
        .unwrap();
    assert_eq!(outcome.removed, vec!["fd00::/56".parse::<IpNet>().unwrap()]);
    assert_eq!(nets(&store.list()), ["10.0.0.0/16", "192.168.0.0/24"]);
    let status = store.cloud_status().unwrap();
    assert!(status.last_error.is_none() && status.provider == Some(Provider::Aws));

    // A restart (the cloud not answering) starts from the persisted answer.
    drop(store);
    let store = Store::open_with(&dir.cidr_file(), &dir.state_dir(), true).unwrap();
    assert_eq!(nets(&store.list()), ["10.0.0.0/16", "192.168.0.0/24"]);
    // Without [cloud], the same state dir gives the file's list only.
    let store = Store::open(&dir.cidr_file(), &dir.state_dir()).unwrap();
    assert_eq!(nets(&store.list()), ["192.168.0.0/24"]);
}

#[test]
fn with_the_cloud_the_file_may_be_emptied() {
    let dir = TempDir::new();
    dir.write("10.0.0.0/8\n");
    let store = Store::open_with(&dir.cidr_file(), &dir.state_dir(), true).unwrap();
    store.apply_blocking(remove(&["10.0.0.0/8"]), None).unwrap();
    assert!(store.list().is_empty());
    // Without [cloud] the last entry stays (the file would cut every source off).
    dir.write("10.0.0.0/8\n");
    let store = dir.open();
    assert!(store.apply_blocking(remove(&["10.0.0.0/8"]), None).is_err());
}
