//! One behaviour suite for every store backend: the embedded redb file and a real etcd
//! started for each test. Both must show etcd's semantics exactly.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use anyhow::Result;
use futures::StreamExt;
use skiff_store::{EtcdStore, EventKind, ListOptions, RedbStore, Store, StoreError, WatchStream};
use skiff_tests::etcd::{ETCD, Etcd};

/// A backend under test plus whatever keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _guard: Box<dyn std::any::Any + Send>,
}

fn redb() -> Result<Backend> {
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path())?;
    Ok(Backend {
        store: Arc::new(store),
        _guard: Box::new(dir),
    })
}

/// A fresh etcd, or `None` (with a `skipped:` line) when etcd is not installed.
async fn etcd(test: &str) -> Result<Option<Backend>> {
    if !skiff_tests::require_program(test, ETCD.rsplit('/').next().unwrap_or("etcd")) {
        return Ok(None);
    }
    let etcd = tokio::task::spawn_blocking(Etcd::start).await??;
    let store = EtcdStore::connect(&[etcd.url().to_owned()]).await?;
    Ok(Some(Backend {
        store: Arc::new(store),
        _guard: Box::new(etcd),
    }))
}

/// Generates `<name>_on_redb` and `<name>_on_etcd` tests from one async check.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let backend = super::redb()?;
                    super::$name(backend.store.as_ref()).await
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let Some(backend) = super::etcd(stringify!($name)).await? else {
                        return Ok(());
                    };
                    super::$name(backend.store.as_ref()).await
                }
            )*
        }
    };
}

suite!(
    create_then_get_returns_the_value_at_its_revision,
    creating_an_existing_key_fails_with_already_exists,
    stale_update_is_a_conflict_naming_the_actual_revision,
    delete_returns_the_last_value_at_the_deletion_revision,
    revisions_strictly_increase_across_keys,
    list_pages_through_a_prefix_in_key_order,
    reads_at_an_old_revision_see_the_old_state,
    watch_replays_history_then_streams_live_events_in_order,
    a_resumed_watch_has_no_gap_and_no_duplicate,
    compacted_history_is_refused_to_reads_and_watches,
    concurrent_writers_get_unique_revisions,
    a_snapshot_is_taken,
    an_unlimited_list_returns_every_key_beyond_one_page,
    concurrent_compare_and_swaps_on_one_key_let_exactly_one_win,
    concurrent_writes_take_gapless_revisions_a_watch_sees_in_order,
);

async fn next(watch: &mut WatchStream) -> Result<skiff_store::Event> {
    Ok(tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("watch ended"))??)
}

async fn create_then_get_returns_the_value_at_its_revision(s: &dyn Store) -> Result<()> {
    let kv = s
        .create("/registry/pods/default/a", b"one".to_vec())
        .await?;
    assert_eq!(kv.create_revision, kv.mod_revision);
    let got = s
        .get("/registry/pods/default/a", 0)
        .await?
        .expect("present");
    assert_eq!(got, kv);
    assert_eq!(s.current_revision().await?, kv.mod_revision);
    assert!(s.get("/registry/pods/default/b", 0).await?.is_none());
    Ok(())
}

async fn creating_an_existing_key_fails_with_already_exists(s: &dyn Store) -> Result<()> {
    s.create("/k", b"1".to_vec()).await?;
    let err = s
        .create("/k", b"2".to_vec())
        .await
        .expect_err("second create");
    assert!(
        matches!(err, StoreError::AlreadyExists(ref k) if k == "/k"),
        "{err}"
    );
    assert_eq!(s.get("/k", 0).await?.expect("kept").value, b"1");
    Ok(())
}

async fn stale_update_is_a_conflict_naming_the_actual_revision(s: &dyn Store) -> Result<()> {
    let v1 = s.create("/k", b"1".to_vec()).await?;
    let v2 = s.update("/k", b"2".to_vec(), v1.mod_revision).await?;
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(v2.create_revision, v1.create_revision);
    let err = s
        .update("/k", b"3".to_vec(), v1.mod_revision)
        .await
        .expect_err("stale update");
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(actual, v2.mod_revision);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(s.get("/k", 0).await?.expect("kept").value, b"2");
    let missing = s
        .update("/nope", b"x".to_vec(), 1)
        .await
        .expect_err("missing");
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    Ok(())
}

async fn delete_returns_the_last_value_at_the_deletion_revision(s: &dyn Store) -> Result<()> {
    let v1 = s.create("/k", b"1".to_vec()).await?;
    let v2 = s.update("/k", b"2".to_vec(), v1.mod_revision).await?;
    let stale = s
        .delete("/k", Some(v1.mod_revision))
        .await
        .expect_err("stale");
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    let gone = s.delete("/k", Some(v2.mod_revision)).await?;
    assert_eq!(gone.value, b"2");
    assert!(gone.mod_revision > v2.mod_revision);
    assert_eq!(s.current_revision().await?, gone.mod_revision);
    assert!(s.get("/k", 0).await?.is_none());
    let again = s.delete("/k", None).await.expect_err("already gone");
    assert!(matches!(again, StoreError::NotFound(_)), "{again}");
    // A key can come back, with a new create revision.
    let back = s.create("/k", b"3".to_vec()).await?;
    assert!(back.create_revision > gone.mod_revision);
    Ok(())
}

async fn revisions_strictly_increase_across_keys(s: &dyn Store) -> Result<()> {
    let mut last = s.current_revision().await?;
    for i in 0..20 {
        let kv = s.create(&format!("/r/{i}"), vec![]).await?;
        assert_eq!(kv.mod_revision, last + 1, "one write, one revision");
        last = kv.mod_revision;
    }
    Ok(())
}

async fn list_pages_through_a_prefix_in_key_order(s: &dyn Store) -> Result<()> {
    for name in ["c", "a", "e", "b", "d"] {
        s.create(
            &format!("/registry/cm/ns1/{name}"),
            name.as_bytes().to_vec(),
        )
        .await?;
    }
    s.create("/registry/cm/ns10/x", vec![]).await?;
    s.create("/registry/cm/ns2/y", vec![]).await?;
    let all = s.list("/registry/cm/ns1/", ListOptions::default()).await?;
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b", "c", "d", "e"].map(|n| format!("/registry/cm/ns1/{n}"))
    );
    assert!(!all.more);
    assert_eq!(all.revision, s.current_revision().await?);

    let mut seen = Vec::new();
    let mut start_after = None;
    loop {
        let page = s
            .list(
                "/registry/cm/ns1/",
                ListOptions {
                    revision: all.revision,
                    start_after: start_after.clone(),
                    limit: 2,
                },
            )
            .await?;
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|kv| kv.key.clone()));
        start_after = page.items.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, keys);
    Ok(())
}

async fn reads_at_an_old_revision_see_the_old_state(s: &dyn Store) -> Result<()> {
    let a1 = s.create("/o/a", b"a1".to_vec()).await?;
    let b1 = s.create("/o/b", b"b1".to_vec()).await?;
    let old = s.current_revision().await?;
    s.update("/o/a", b"a2".to_vec(), a1.mod_revision).await?;
    s.delete("/o/b", Some(b1.mod_revision)).await?;
    s.create("/o/c", b"c1".to_vec()).await?;

    let then = s
        .list(
            "/o/",
            ListOptions {
                revision: old,
                ..ListOptions::default()
            },
        )
        .await?;
    let values: Vec<&[u8]> = then.items.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, [b"a1".as_slice(), b"b1".as_slice()]);
    assert_eq!(then.revision, old);
    assert_eq!(s.get("/o/b", old).await?.expect("b at old").value, b"b1");
    assert!(s.get("/o/c", old).await?.is_none());
    let now = s.list("/o/", ListOptions::default()).await?;
    let values: Vec<&[u8]> = now.items.iter().map(|kv| kv.value.as_slice()).collect();
    assert_eq!(values, [b"a2".as_slice(), b"c1".as_slice()]);
    Ok(())
}

async fn watch_replays_history_then_streams_live_events_in_order(s: &dyn Store) -> Result<()> {
    let start = s.current_revision().await?;
    let a = s.create("/w/a", b"1".to_vec()).await?;
    s.create("/other/x", vec![]).await?;
    let a2 = s.update("/w/a", b"2".to_vec(), a.mod_revision).await?;
    let mut watch = s.watch("/w/", start).await?;
    let e1 = next(&mut watch).await?;
    assert_eq!(
        (e1.kind, e1.kv.mod_revision),
        (EventKind::Put, a.mod_revision)
    );
    assert!(e1.prev.is_none());
    let e2 = next(&mut watch).await?;
    assert_eq!(e2.kv, a2);
    assert_eq!(e2.prev.expect("prev").value, b"1");
    // Live from here.
    let gone = s.delete("/w/a", None).await?;
    let b = s.create("/w/b", b"b".to_vec()).await?;
    let e3 = next(&mut watch).await?;
    assert_eq!(e3.kind, EventKind::Delete);
    assert_eq!(e3.kv.mod_revision, gone.mod_revision);
    assert_eq!(e3.kv.value, b"2", "a delete carries the last value");
    let e4 = next(&mut watch).await?;
    assert_eq!(e4.kv, b);
    Ok(())
}

async fn a_resumed_watch_has_no_gap_and_no_duplicate(s: &dyn Store) -> Result<()> {
    let start = s.current_revision().await?;
    let mut watch = s.watch("/g/", start).await?;
    let mut written = Vec::new();
    for i in 0..10 {
        written.push(s.create(&format!("/g/{i}"), vec![]).await?.mod_revision);
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut watch).await?.kv.mod_revision);
    }
    drop(watch);
    // Resume from the last revision seen, as a client does after a disconnect.
    let mut resumed = s.watch("/g/", *got.last().expect("four events")).await?;
    for i in 10..12 {
        written.push(s.create(&format!("/g/{i}"), vec![]).await?.mod_revision);
    }
    while got.len() < written.len() {
        got.push(next(&mut resumed).await?.kv.mod_revision);
    }
    assert_eq!(got, written);
    Ok(())
}

async fn compacted_history_is_refused_to_reads_and_watches(s: &dyn Store) -> Result<()> {
    let v1 = s.create("/c/k", b"1".to_vec()).await?;
    let v2 = s.update("/c/k", b"2".to_vec(), v1.mod_revision).await?;
    let d = s.create("/c/d", b"d".to_vec()).await?;
    s.delete("/c/d", None).await?;
    let v3 = s.update("/c/k", b"3".to_vec(), v2.mod_revision).await?;
    s.compact(v2.mod_revision + 1).await?;
    assert_eq!(s.compacted_revision().await?, v2.mod_revision + 1);

    let err = s.get("/c/k", v1.mod_revision).await.expect_err("compacted");
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    let err = s
        .watch("/c/", v1.mod_revision)
        .await
        .map(|_| ())
        .expect_err("watch from compacted");
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    // The state at the compaction revision is still readable.
    let at = s
        .get("/c/k", v2.mod_revision + 1)
        .await?
        .expect("k at compaction");
    assert_eq!(at.value, b"2");
    assert_eq!(s.get("/c/d", d.mod_revision + 1).await?, None);
    assert_eq!(s.get("/c/k", 0).await?.expect("current"), v3);
    // Watching from the compaction revision replays what follows it.
    let mut watch = s.watch("/c/", v2.mod_revision + 1).await?;
    let mut revisions = Vec::new();
    while revisions.last() != Some(&v3.mod_revision) {
        revisions.push(next(&mut watch).await?.kv.mod_revision);
    }
    assert!(revisions.iter().all(|r| *r > v2.mod_revision + 1));
    Ok(())
}

async fn concurrent_writers_get_unique_revisions(s: &dyn Store) -> Result<()> {
    let before = s.current_revision().await?;
    let revisions = futures::future::try_join_all((0..8).map(|w| async move {
        let mut mine = Vec::new();
        for i in 0..50 {
            mine.push(
                s.create(&format!("/cw/{w}/{i}"), vec![])
                    .await?
                    .mod_revision,
            );
        }
        Ok::<_, StoreError>(mine)
    }))
    .await?;
    let all: BTreeSet<i64> = revisions.iter().flatten().copied().collect();
    assert_eq!(all.len(), 400, "every write got its own revision");
    assert_eq!(*all.first().expect("some"), before + 1);
    assert_eq!(*all.last().expect("some"), before + 400);
    for writer in &revisions {
        assert!(writer.windows(2).all(|w| w[0] < w[1]), "per-writer order");
    }
    Ok(())
}

async fn concurrent_compare_and_swaps_on_one_key_let_exactly_one_win(s: &dyn Store) -> Result<()> {
    let v1 = s.create("/cas/k", b"0".to_vec()).await?;
    let updates = futures::future::join_all(
        (0..16).map(|i| s.update("/cas/k", i.to_string().into_bytes(), v1.mod_revision)),
    )
    .await;
    let (won, lost): (Vec<_>, Vec<_>) = updates.into_iter().partition(Result::is_ok);
    assert_eq!(won.len(), 1, "exactly one update wins");
    let winner = won.into_iter().next().expect("one")?;
    for err in lost.into_iter().filter_map(Result::err) {
        assert!(
            matches!(err, StoreError::Conflict { actual, .. } if actual == winner.mod_revision),
            "{err}"
        );
    }
    assert_eq!(s.get("/cas/k", 0).await?, Some(winner));

    let creates = futures::future::join_all(
        (0..16).map(|i| s.create("/cas/new", i.to_string().into_bytes())),
    )
    .await;
    let (won, lost): (Vec<_>, Vec<_>) = creates.into_iter().partition(Result::is_ok);
    assert_eq!(won.len(), 1, "exactly one create wins");
    for err in lost.into_iter().filter_map(Result::err) {
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    }
    Ok(())
}

async fn concurrent_writes_take_gapless_revisions_a_watch_sees_in_order(
    s: &dyn Store,
) -> Result<()> {
    let start = s.current_revision().await?;
    let mut watch = s.watch("/gap/", start).await?;
    // Each writer creates, fails a stale update, updates and deletes its keys, so refused
    // writes sit among accepted ones in whatever batches form.
    let acknowledged = futures::future::try_join_all((0..8).map(|w| async move {
        let mut mine = Vec::new();
        for i in 0..20 {
            let key = format!("/gap/{w}/{i}");
            let created = s.create(&key, b"1".to_vec()).await?;
            let stale = s
                .update(&key, b"x".to_vec(), created.mod_revision - 1)
                .await;
            assert!(
                matches!(stale, Err(StoreError::Conflict { .. })),
                "{stale:?}"
            );
            let updated = s.update(&key, b"2".to_vec(), created.mod_revision).await?;
            let deleted = s.delete(&key, Some(updated.mod_revision)).await?;
            mine.extend([created, updated, deleted]);
        }
        Ok::<_, StoreError>(mine)
    }))
    .await?;
    let mut revisions: Vec<i64> = acknowledged
        .iter()
        .flatten()
        .map(|kv| kv.mod_revision)
        .collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + 480).collect();
    assert_eq!(
        revisions, expected,
        "one revision per accepted write, no gaps"
    );
    assert_eq!(s.current_revision().await?, start + 480);

    let by_revision: std::collections::BTreeMap<i64, &skiff_store::KeyValue> = acknowledged
        .iter()
        .flatten()
        .map(|kv| (kv.mod_revision, kv))
        .collect();
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        let event = next(&mut watch).await?;
        assert_eq!(Some(&&event.kv), by_revision.get(&event.kv.mod_revision));
        seen.push(event.kv.mod_revision);
    }
    assert_eq!(
        seen, expected,
        "the watch sees every write in revision order"
    );
    Ok(())
}

async fn an_unlimited_list_returns_every_key_beyond_one_page(s: &dyn Store) -> Result<()> {
    futures::future::try_join_all((0..4).map(|w| async move {
        for i in 0..300 {
            s.create(&format!("/big/{w}-{i:04}"), vec![b'x'; 64])
                .await?;
        }
        Ok::<_, StoreError>(())
    }))
    .await?;
    let all = s.list("/big/", ListOptions::default()).await?;
    assert_eq!(all.items.len(), 1200);
    assert!(!all.more);
    assert!(all.items.windows(2).all(|w| w[0].key < w[1].key));
    Ok(())
}

async fn a_snapshot_is_taken(s: &dyn Store) -> Result<()> {
    s.create("/s/k", b"v".to_vec()).await?;
    let snapshot = s.snapshot().await?;
    assert!(snapshot.len() > 100, "snapshot of {} bytes", snapshot.len());
    Ok(())
}

#[tokio::test]
async fn an_embedded_store_reopens_with_its_data_and_revisions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let last = {
        let s = RedbStore::open(dir.path())?;
        s.create("/p/a", b"1".to_vec()).await?;
        s.create("/p/b", b"2".to_vec()).await?
    };
    let s = RedbStore::open(dir.path())?;
    assert_eq!(s.get("/p/b", 0).await?.expect("kept"), last);
    assert_eq!(s.current_revision().await?, last.mod_revision);
    let next = s.create("/p/c", vec![]).await?;
    assert_eq!(next.mod_revision, last.mod_revision + 1);
    Ok(())
}

#[tokio::test]
async fn an_embedded_snapshot_restores_into_a_new_directory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = RedbStore::open(&dir.path().join("live"))?;
    let a = s.create("/b/a", b"1".to_vec()).await?;
    let snapshot = s.snapshot().await?;
    s.update("/b/a", b"after backup".to_vec(), a.mod_revision)
        .await?;

    let restored = RedbStore::restore(&snapshot, &dir.path().join("restored"))?;
    assert_eq!(restored.get("/b/a", 0).await?.expect("restored"), a);
    assert_eq!(restored.current_revision().await?, a.mod_revision);
    let refused = RedbStore::restore(&snapshot, &dir.path().join("restored"));
    assert!(refused.is_err(), "restore over an existing store");
    Ok(())
}

#[test]
fn a_killed_writer_loses_no_acknowledged_write() -> Result<()> {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir()?;
    let mut writer = skiff_tests::process::ChildGuard::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_store_writer"))
            .arg(dir.path())
            .stdout(std::process::Stdio::piped()),
    )?;
    let stdout = writer.child_mut().stdout.take().expect("piped");
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines().take(300) {
        acknowledged.push(line?);
    }
    // SIGKILL mid-stream: the writers are still committing when they die.
    drop(writer);
    assert_eq!(acknowledged.len(), 300);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let s = RedbStore::open(dir.path())?;
        let mut last = 0;
        for line in &acknowledged {
            let (key, revision) = line.split_once(' ').expect("key revision");
            let revision: i64 = revision.parse()?;
            let kv = s.get(key, 0).await?.unwrap_or_else(|| panic!("{key} lost"));
            assert_eq!(kv.mod_revision, revision);
            last = last.max(revision);
        }
        assert!(s.current_revision().await? >= last);
        Ok(())
    })
}
