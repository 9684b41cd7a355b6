//! SQLite group commit: writes from many tasks at once are committed together, yet each
//! caller gets its own revision and its own precondition verdict, revisions are strictly
//! ordered, and watchers see every write once, in revision order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use hull_control::store::{SqliteOptions, SqliteStore, Store, StoreError, WatchEvent};

const WRITERS: usize = 32;
const ROUNDS: usize = 20;

fn open(test: &str) -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hull-{test}-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("state.db")).expect("open");
    (dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_get_distinct_ordered_revisions_and_watchers_see_them_in_order() {
    let (_dir, store) = open("gc-order");
    let prefix = "/registry/configmaps/group-commit/";
    let start = store.current_revision().await.expect("revision");
    let mut watch = store.watch(prefix, start).await.expect("watch");

    // Each writer creates its own key, then updates it ROUNDS times with the revision its
    // previous write returned (a stale revision would be a Conflict), then deletes it.
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("{prefix}w{w:02}");
                let mut revs = vec![store.create(&key, b"0".to_vec()).await.expect("create")];
                for round in 1..=ROUNDS {
                    let prev = *revs.last().unwrap_or(&0);
                    let value = round.to_string().into_bytes();
                    revs.push(store.update(&key, value, prev).await.expect("update"));
                }
                let prev = *revs.last().unwrap_or(&0);
                let (rev, last) = store.delete(&key, Some(prev)).await.expect("delete");
                assert_eq!(last.value, ROUNDS.to_string().into_bytes());
                // As etcd reports it: the last value, at the delete's revision.
                assert_eq!(last.mod_revision, rev);
                revs.push(rev);
                (key, revs)
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for t in tasks {
        let (key, revs) = t.await.expect("writer");
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "{key}: one writer's revisions go up: {revs:?}"
        );
        for rev in revs {
            assert!(
                acknowledged.insert(rev, key.clone()).is_none(),
                "revision {rev} given to two writes"
            );
        }
    }
    let total = WRITERS * (ROUNDS + 2);
    assert_eq!(acknowledged.len(), total);
    assert!(acknowledged.keys().all(|r| *r > start));
    assert_eq!(
        store.current_revision().await.expect("revision"),
        start + total as i64,
        "no revision skipped or reused"
    );

    // The watch delivers every acknowledged write once, in revision order, with the key
    // the write was for.
    let mut seen = Vec::with_capacity(total);
    while seen.len() < total {
        let event = watch
            .next()
            .await
            .expect("watch ended early")
            .expect("watch event");
        seen.push((event.revision(), event.kv().key.clone(), event));
    }
    assert!(
        seen.windows(2).all(|p| p[0].0 < p[1].0),
        "watch events out of order"
    );
    for (rev, key, event) in &seen {
        assert_eq!(acknowledged.get(rev), Some(key), "event at {rev}");
        if let WatchEvent::Put {
            kv,
            prev: Some(prev),
        } = event
        {
            assert!(prev.mod_revision < kv.mod_revision);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_swap_on_one_key_loses_no_update() {
    let (_dir, store) = open("gc-cas");
    let key = "/registry/configmaps/group-commit/counter";
    store.create(key, b"0".to_vec()).await.expect("create");
    // Every writer increments the counter INCREMENTS times by read-modify-write; writes
    // that land in the same batch as another's see their Conflict, re-read and retry.
    const INCREMENTS: usize = 10;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0usize;
                let mut done = 0;
                while done < INCREMENTS {
                    let kv = store.get(key).await.expect("get").expect("counter exists");
                    let n: usize = String::from_utf8_lossy(&kv.value).parse().expect("number");
                    match store
                        .update(key, (n + 1).to_string().into_bytes(), kv.mod_revision)
                        .await
                    {
                        Ok(rev) => {
                            assert!(rev > kv.mod_revision);
                            done += 1;
                        }
                        Err(StoreError::Conflict {
                            expected, actual, ..
                        }) => {
                            assert_eq!(expected, kv.mod_revision);
                            assert!(actual > expected, "a conflict names the newer revision");
                            conflicts += 1;
                        }
                        Err(e) => panic!("update: {e}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.expect("writer");
    }
    let kv = store.get(key).await.expect("get").expect("counter");
    assert_eq!(
        String::from_utf8_lossy(&kv.value),
        (WRITERS * INCREMENTS).to_string(),
        "every acknowledged increment is in the value ({conflicts} conflicts retried)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_many_concurrent_creates_of_a_key_wins_and_refusals_do_not_disturb_the_batch() {
    let (_dir, store) = open("gc-create");
    let prefix = "/registry/configmaps/group-commit/";
    let contested = format!("{prefix}contested");
    // Half the tasks race for one key; the other half create keys of their own in the same
    // batches — a refused write must not undo or delay its neighbours.
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let key = if w % 2 == 0 {
                contested.clone()
            } else {
                format!("{prefix}own-{w:02}")
            };
            tokio::spawn(async move {
                let value = format!("writer {w}").into_bytes();
                (key.clone(), w, store.create(&key, value).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut own = BTreeSet::new();
    for t in tasks {
        let (key, w, result) = t.await.expect("writer");
        match result {
            Ok(rev) if key == contested => winners.push((w, rev)),
            Ok(_) => {
                own.insert(key);
            }
            Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, contested),
            Err(e) => panic!("create {key}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create of {contested} wins");
    assert_eq!(own.len(), WRITERS / 2);
    let (w, rev) = winners[0];
    let kv = store
        .get(&contested)
        .await
        .expect("get")
        .expect("contested");
    assert_eq!(kv.value, format!("writer {w}").into_bytes());
    assert_eq!(kv.mod_revision, rev);
    let listed = store.list(prefix, None, 0, 0).await.expect("list");
    assert_eq!(listed.items.len(), WRITERS / 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_commit_per_write_keeps_the_same_semantics() {
    // max_batch 1 is the benchmark's peer; it must behave identically.
    let dir = tempfile::Builder::new()
        .prefix(&format!("hull-gc-single-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open_with(&dir.path().join("state.db"), SqliteOptions { max_batch: 1 })
            .expect("open"),
    );
    let key = "/registry/configmaps/group-commit/single";
    let r1 = store.create(key, b"a".to_vec()).await.expect("create");
    let r2 = store.update(key, b"b".to_vec(), r1).await.expect("update");
    assert!(matches!(
        store.update(key, b"c".to_vec(), r1).await,
        Err(StoreError::Conflict { expected, actual, .. }) if expected == r1 && actual == r2
    ));
    store.compact(r2).await.expect("compact");
    let (r3, last) = store.delete(key, None).await.expect("delete");
    assert!(r3 > r2);
    assert_eq!(last.value, b"b");
    assert!(matches!(
        store.delete(key, None).await,
        Err(StoreError::NotFound { .. })
    ));
}
