//! The storage test suite every backend passes: one set of async functions, each taking a
//! store and a key prefix of its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hull_control::store::{KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream};

/// Guards against a hang, not a performance assertion: a missing event fails the test
/// instead of blocking the suite forever.
const HANG: Duration = Duration::from_secs(60);

pub async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(HANG, stream.next()).await {
            Ok(Some(Ok(ev))) => out.push(ev),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
            Ok(None) => panic!("watch ended after {} of {n} events", out.len()),
            Err(_) => panic!("no watch event in {HANG:?} after {} of {n}", out.len()),
        }
    }
    out
}

fn put(ev: &WatchEvent) -> (&KeyValue, Option<&KeyValue>) {
    match ev {
        WatchEvent::Put { kv, prev } => (kv, prev.as_ref()),
        other => panic!("expected a put, got {other:?}"),
    }
}

/// Create, get, update and delete with compare-and-swap.
pub async fn crud(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}ns/a");
    assert_eq!(s.get(&key).await.unwrap(), None);
    let r1 = s.create(&key, b"v1".to_vec()).await.unwrap();
    let kv = s.get(&key).await.unwrap().expect("created key");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"v1"[..], r1, r1)
    );

    match s.create(&key, b"again".to_vec()).await {
        Err(StoreError::AlreadyExists { key: k }) => assert_eq!(k, key),
        other => panic!("second create: {other:?}"),
    }
    match s.update(&key, b"stale".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict {
            key: k,
            expected,
            actual,
        }) => {
            assert_eq!((k.as_str(), expected, actual), (key.as_str(), r1 - 1, r1));
        }
        other => panic!("update with a stale revision: {other:?}"),
    }
    let r2 = s.update(&key, b"v2".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    let kv = s.get(&key).await.unwrap().expect("updated key");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"v2"[..], r1, r2)
    );
    // The stale revision stays stale after a successful update.
    assert!(matches!(
        s.update(&key, b"v3".to_vec(), r1).await,
        Err(StoreError::Conflict { actual, .. }) if actual == r2
    ));
    assert_eq!(
        s.get(&key).await.unwrap().map(|kv| kv.value),
        Some(b"v2".to_vec())
    );

    assert!(matches!(
        s.delete(&key, Some(r1)).await,
        Err(StoreError::Conflict { actual, .. }) if actual == r2
    ));
    let (r3, last) = s.delete(&key, Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(
        (
            last.value.as_slice(),
            last.create_revision,
            last.mod_revision
        ),
        (&b"v2"[..], r1, r3)
    );
    assert_eq!(s.get(&key).await.unwrap(), None);

    assert!(matches!(
        s.update(&key, b"x".to_vec(), r2).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete(&key, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete(&key, Some(r3)).await,
        Err(StoreError::NotFound { .. })
    ));

    // A key re-created after a delete is a new incarnation.
    let r4 = s.create(&key, b"again".to_vec()).await.unwrap();
    let kv = s.get(&key).await.unwrap().expect("re-created key");
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    let (r5, _) = s.delete(&key, None).await.unwrap();
    assert!(r5 > r4);
    assert!(s.current_revision().await.unwrap() >= r5);
}

/// Pages of `limit` keys with `start_after`, the count of what remains, all at one revision.
pub async fn list_pagination(s: &Arc<dyn Store>, p: &str) {
    let mut names = Vec::new();
    for i in 0..25 {
        let key = format!("{p}ns/pod-{i:03}");
        s.create(&key, format!("value {i}").into_bytes())
            .await
            .unwrap();
        names.push(key);
    }
    // A sibling whose name extends the prefix's text must not leak into the list.
    let sibling = format!("{}-other/ns/x", p.trim_end_matches('/'));
    s.create(&sibling, b"x".to_vec()).await.unwrap();
    assert_eq!(s.count(p).await.unwrap(), 25);

    let all = s.list(p, None, 0, 0).await.unwrap();
    assert_eq!(
        all.items
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(all.remaining, 0);

    let first = s.list(p, None, 10, 0).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.remaining, 15);
    // A write between pages must not show in later pages read at the first page's revision.
    let late = format!("{p}ns/pod-999");
    s.create(&late, b"late".to_vec()).await.unwrap();
    let last = first.items.last().map(|kv| kv.key.as_str());
    let second = s.list(p, last, 10, first.revision).await.unwrap();
    assert_eq!(
        (second.items.len(), second.remaining, second.revision),
        (10, 5, first.revision)
    );
    let last = second.items.last().map(|kv| kv.key.as_str());
    let third = s.list(p, last, 10, first.revision).await.unwrap();
    assert_eq!((third.items.len(), third.remaining), (5, 0));
    let paged: Vec<String> = [first.items, second.items, third.items]
        .into_iter()
        .flatten()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(paged, names);

    let now = s.list(p, None, 0, 0).await.unwrap();
    assert_eq!(now.items.len(), 26);
    assert!(now.revision > first.revision);
    assert_eq!(s.list(p, Some(&late), 10, 0).await.unwrap().items, vec![]);
    assert_eq!(
        s.list(&format!("{p}nope/"), None, 10, 0)
            .await
            .unwrap()
            .items,
        vec![]
    );
}

/// A list at an old revision shows the keys and values as they were then.
pub async fn list_at_old_revision(s: &Arc<dyn Store>, p: &str) {
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    let ra = s.create(&a, b"a1".to_vec()).await.unwrap();
    s.create(&b, b"b1".to_vec()).await.unwrap();
    let then = s.current_revision().await.unwrap();
    s.update(&a, b"a2".to_vec(), ra).await.unwrap();
    s.delete(&b, None).await.unwrap();
    s.create(&c, b"c1".to_vec()).await.unwrap();

    let old = s.list(p, None, 0, then).await.unwrap();
    let view: Vec<(String, Vec<u8>)> = old.items.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(
        view,
        vec![(a.clone(), b"a1".to_vec()), (b.clone(), b"b1".to_vec())]
    );
    assert_eq!(old.revision, then);

    let new = s.list(p, None, 0, 0).await.unwrap();
    let view: Vec<(String, Vec<u8>)> = new.items.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(view, vec![(a, b"a2".to_vec()), (c, b"c1".to_vec())]);
    // A revision not yet written is refused, not waited for forever.
    let future = s.current_revision().await.unwrap() + 1000;
    assert!(matches!(
        s.list(p, None, 0, future).await,
        Err(StoreError::Unavailable(_))
    ));
    // Paging at an old revision counts what was there then.
    let page = s.list(p, None, 1, then).await.unwrap();
    assert_eq!((page.items.len(), page.remaining), (1, 1));
}

/// A watch from a revision sees exactly the events after it, in order, then live events.
pub async fn watch_from_revision(s: &Arc<dyn Store>, p: &str) {
    let (a, b, c, d) = (
        format!("{p}a"),
        format!("{p}b"),
        format!("{p}c"),
        format!("{p}d"),
    );
    let outside = format!("{}-other/x", p.trim_end_matches('/'));
    let r0 = s.current_revision().await.unwrap();
    let r1 = s.create(&a, b"a1".to_vec()).await.unwrap();
    let r2 = s.update(&a, b"a2".to_vec(), r1).await.unwrap();
    let r3 = s.create(&b, b"b1".to_vec()).await.unwrap();
    let (r4, _) = s.delete(&a, Some(r2)).await.unwrap();
    s.create(&outside, b"x".to_vec()).await.unwrap();

    let mut w = s.watch(p, r0).await.unwrap();
    let evs = next_events(&mut w, 4).await;
    let (kv, prev) = put(&evs[0]);
    assert_eq!(
        (
            kv.key.as_str(),
            kv.value.as_slice(),
            kv.mod_revision,
            kv.create_revision
        ),
        (a.as_str(), &b"a1"[..], r1, r1)
    );
    assert_eq!(prev, None);
    let (kv, prev) = put(&evs[1]);
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.create_revision),
        (&b"a2"[..], r2, r1)
    );
    let prev = prev.expect("an update carries the previous value");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"a1"[..], r1));
    let (kv, _) = put(&evs[2]);
    assert_eq!((kv.key.as_str(), kv.mod_revision), (b.as_str(), r3));
    match &evs[3] {
        WatchEvent::Delete { kv } => {
            assert_eq!(
                (
                    kv.key.as_str(),
                    kv.value.as_slice(),
                    kv.mod_revision,
                    kv.create_revision
                ),
                (a.as_str(), &b"a2"[..], r4, r1)
            );
        }
        other => panic!("expected the delete, got {other:?}"),
    }

    // From a revision in the middle; and from "now".
    let mut mid = s.watch(p, r2).await.unwrap();
    let mut now = s.watch(p, 0).await.unwrap();
    let r5 = s.create(&c, b"c1".to_vec()).await.unwrap();
    let r6 = s.create(&d, b"d1".to_vec()).await.unwrap();
    let revs = |evs: Vec<WatchEvent>| {
        evs.iter()
            .map(WatchEvent::revision)
            .collect::<Vec<Revision>>()
    };
    // The next two events are exactly c then d: nothing from outside the prefix between.
    assert_eq!(revs(next_events(&mut w, 2).await), vec![r5, r6]);
    assert_eq!(revs(next_events(&mut mid, 4).await), vec![r3, r4, r5, r6]);
    assert_eq!(revs(next_events(&mut now, 2).await), vec![r5, r6]);
}

/// History before a compaction is gone: watch and list there answer Compacted; current
/// values are untouched.
pub async fn watch_compacted(s: &Arc<dyn Store>, p: &str) {
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let r1 = s.create(&a, b"a1".to_vec()).await.unwrap();
    let r2 = s.update(&a, b"a2".to_vec(), r1).await.unwrap();
    let r3 = s.update(&a, b"a3".to_vec(), r2).await.unwrap();
    let r4 = s.create(&b, b"b1".to_vec()).await.unwrap();
    s.compact(r3).await.unwrap();
    s.compact(r3).await.expect("compaction is idempotent");

    match s.watch(p, r1).await {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, r1),
        Err(e) => panic!("watch from a compacted revision: {e}"),
        Ok(_) => panic!("watch from a compacted revision succeeded"),
    }
    assert!(matches!(
        s.list(p, None, 0, r2).await,
        Err(StoreError::Compacted { .. })
    ));
    let at = s.list(p, None, 0, r3).await.unwrap();
    assert_eq!(
        at.items
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        vec![b"a3".to_vec()]
    );
    let kv = s
        .get(&a)
        .await
        .unwrap()
        .expect("current value survives compaction");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"a3"[..], r1, r3)
    );
    let mut w = s.watch(p, r3).await.unwrap();
    assert_eq!(next_events(&mut w, 1).await[0].revision(), r4);

    // A deleted key compacted away can be created again.
    let (r5, _) = s.delete(&a, None).await.unwrap();
    s.compact(r5).await.unwrap();
    assert_eq!(s.get(&a).await.unwrap(), None);
    let r6 = s.create(&a, b"new".to_vec()).await.unwrap();
    assert_eq!(
        s.get(&a).await.unwrap().map(|kv| kv.create_revision),
        Some(r6)
    );
    assert_eq!(s.count(p).await.unwrap(), 2);
}

/// Many writers race on one revision: exactly one wins; read-modify-write loops lose nothing.
pub async fn concurrent_updates(s: &Arc<dyn Store>, p: &str) {
    let key = format!("{p}counter");
    let r0 = s.create(&key, b"0".to_vec()).await.unwrap();
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let (s, key) = (s.clone(), key.clone());
            tokio::spawn(async move { s.update(&key, format!("racer {i}").into_bytes(), r0).await })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("racer: {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one update on revision {r0} wins");

    // Reset to a counter, then 8 tasks increment it 10 times each with CAS retries.
    let cur = s.get(&key).await.unwrap().expect("counter");
    s.update(&key, b"0".to_vec(), cur.mod_revision)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, key) = (s.clone(), key.clone());
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for _ in 0..10 {
                    loop {
                        let kv = s.get(&key).await.unwrap().expect("counter");
                        let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                        match s
                            .update(&key, (n + 1).to_string().into_bytes(), kv.mod_revision)
                            .await
                        {
                            Ok(rev) => {
                                revisions.push(rev);
                                break;
                            }
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("increment: {e}"),
                        }
                    }
                }
                revisions
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in tasks {
        for rev in t.await.unwrap() {
            assert!(all.insert(rev), "revision {rev} given to two writes");
        }
    }
    let kv = s.get(&key).await.unwrap().expect("counter");
    assert_eq!(kv.value, b"80".to_vec());
    assert_eq!(Some(&kv.mod_revision), all.last());
}

/// Revisions are one store-wide sequence: unique, increasing per writer, and exactly the
/// revisions a watch sees.
pub async fn revisions_global_monotonic(s: &Arc<dyn Store>, p: &str) {
    let r0 = s.current_revision().await.unwrap();
    let mut w = s.watch(p, r0).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (s, p) = (s.clone(), p.to_owned());
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..25 {
                    revs.push(
                        s.create(&format!("{p}t{t}/k{i}"), vec![b'x'; 16])
                            .await
                            .unwrap(),
                    );
                }
                revs
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions increase: {revs:?}"
        );
        for r in revs {
            assert!(r > r0);
            assert!(all.insert(r), "revision {r} given twice");
        }
    }
    assert!(s.current_revision().await.unwrap() >= *all.last().unwrap());
    let seen: Vec<Revision> = next_events(&mut w, 200)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(
        seen,
        all.iter().copied().collect::<Vec<_>>(),
        "the watch sees every write in revision order"
    );
    assert_eq!(s.list(p, None, 0, 0).await.unwrap().items.len(), 200);
}

/// Every one of `watchers` watchers receives every event, in order.
pub async fn fan_out(s: &Arc<dyn Store>, p: &str, watchers: usize, writes: usize) {
    let r0 = s.current_revision().await.unwrap();
    let mut streams = Vec::with_capacity(watchers);
    for i in 0..watchers {
        // Half from "now", half from a revision: both paths must deliver everything.
        let after = if i % 2 == 0 { 0 } else { r0 };
        streams.push(s.watch(p, after).await.unwrap());
    }
    let mut revs = Vec::with_capacity(writes);
    for i in 0..writes {
        revs.push(
            s.create(&format!("{p}k{i:04}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                next_events(&mut w, writes)
                    .await
                    .iter()
                    .map(WatchEvent::revision)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        assert_eq!(
            r.await.unwrap(),
            revs,
            "watcher {i} saw every event in order"
        );
    }
}

/// A list bigger than gRPC's default 4 MiB message (10,000 pods are ~15 MiB) comes back whole.
pub async fn large_list(s: &Arc<dyn Store>, p: &str) {
    let value = vec![b'v'; 256 * 1024];
    for i in 0..24 {
        s.create(&format!("{p}big-{i:02}"), value.clone())
            .await
            .unwrap();
    }
    let all = s.list(p, None, 0, 0).await.unwrap();
    assert_eq!(all.items.len(), 24);
    assert!(all.items.iter().all(|kv| kv.value == value));
}
