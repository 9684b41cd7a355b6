//! The watch cache over real backends: fan-out to 1,000 watchers on one store watch, the
//! window (Compacted when a watch starts before it), slow watchers, and an etcd restart.

mod store_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hull_control::store::{CacheConfig, CachedStore, Revision, Store, StoreError, WatchEvent};
use store_support::{Backend, Etcd, prefix, suite};

async fn cache(inner: Arc<dyn Store>, window: usize) -> Arc<CachedStore> {
    let config = CacheConfig {
        window,
        ..CacheConfig::default()
    };
    Arc::new(
        CachedStore::new(inner, config)
            .await
            .expect("start the watch cache"),
    )
}

/// Waits (bounded, as a hang guard) until the cache has delivered `revision`.
async fn caught_up(cache: &CachedStore, revision: Revision) {
    for _ in 0..600 {
        if cache.revision().unwrap() >= revision {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the watch cache never reached revision {revision}");
}

/// etcd's own count of its watchers, from its Prometheus metrics on the client port.
fn etcd_watchers(etcd: &Etcd) -> i64 {
    let addr = etcd.url.trim_start_matches("etcd://");
    let mut conn = TcpStream::connect(addr).expect("etcd metrics");
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("etcd metrics");
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("etcd metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no etcd_debugging_mvcc_watcher_total in etcd's metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_thousand_watchers_get_every_event() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 10_000).await;
    let store: Arc<dyn Store> = cache.clone();
    suite::fan_out(&store, &prefix("cache-fanout-sqlite"), 1000, 50).await;
    assert_eq!(
        cache.watchers(),
        0,
        "finished watchers detach from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_thousand_watchers_share_one_etcd_watch() {
    let backend = Backend::etcd().await;
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    let before = etcd_watchers(etcd);
    let cache = cache(backend.open().await, 10_000).await;
    let store: Arc<dyn Store> = cache.clone();
    let p = prefix("cache-fanout-etcd");
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(store.watch(&p, 0).await.unwrap());
    }
    assert_eq!(cache.watchers(), 1000);
    assert_eq!(
        etcd_watchers(etcd) - before,
        1,
        "1,000 cache watchers cost one etcd watch"
    );
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            store
                .create(&format!("{p}k{i:02}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                suite::next_events(&mut w, 20)
                    .await
                    .iter()
                    .map(WatchEvent::revision)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), revs);
    }
    // And the plain fan-out check through the same cache.
    suite::fan_out(&store, &format!("{p}more/"), 1000, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_before_the_window_is_compacted() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 8).await;
    let p = prefix("cache-window");
    let r0 = cache.current_revision().await.unwrap();
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(
            cache
                .create(&format!("{p}k{i:02}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    caught_up(&cache, revs[19]).await;
    match cache.watch(&p, r0).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!((requested, compacted), (r0, revs[11]));
        }
        Err(e) => panic!("watch before the window: {e}"),
        Ok(_) => panic!("watch before the window succeeded"),
    }
    // The store itself still has that history: only the cache's window is exceeded.
    assert!(cache.inner().watch(&p, r0).await.is_ok());
    let mut w = cache.watch(&p, revs[11]).await.unwrap();
    let got: Vec<Revision> = suite::next_events(&mut w, 8)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(got, revs[12..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_catches_up_from_the_window() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 10_000).await;
    let p = prefix("cache-slow");
    let mut idle = cache.watch(&p, 0).await.unwrap();
    let mut revs = Vec::new();
    // More events than the broadcast holds, so the idle watcher lags behind it.
    for i in 0..1100 {
        revs.push(
            cache
                .create(&format!("{p}k{i:04}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    caught_up(&cache, revs[1099]).await;
    let got: Vec<Revision> = suite::next_events(&mut idle, 1100)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(got, revs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_left_behind_the_window_must_relist() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 100).await;
    let p = prefix("cache-behind");
    let mut idle = cache.watch(&p, 0).await.unwrap();
    let mut last = 0;
    for i in 0..300 {
        last = cache
            .create(&format!("{p}k{i:03}"), b"v".to_vec())
            .await
            .unwrap();
    }
    caught_up(&cache, last).await;
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), idle.next()).await {
            Ok(Some(Ok(_))) => seen += 1,
            Ok(Some(Err(e))) => {
                assert!(matches!(e, StoreError::Compacted { .. }), "got {e}");
                break;
            }
            Ok(None) => panic!("watch ended without an error after {seen} events"),
            Err(_) => panic!("watcher neither caught up nor failed"),
        }
    }
    assert!(
        seen < 300,
        "a watcher cannot have seen everything and be told to re-list"
    );
    assert!(
        idle.next().await.is_none(),
        "the watch ends after Compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_outside_the_prefix_go_to_the_store() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 100).await;
    let key = format!("/hull-test-{}/outside", std::process::id());
    let mut w = cache.watch(&key, 0).await.unwrap();
    let rev = cache.create(&key, b"v".to_vec()).await.unwrap();
    assert_eq!(suite::next_events(&mut w, 1).await[0].revision(), rev);
    assert_eq!(cache.watchers(), 0, "not a cache watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_cache_ends_its_watches() {
    let backend = Backend::sqlite().await;
    let cache = cache(backend.open().await, 100).await;
    let mut w = cache.watch(&prefix("cache-drop"), 0).await.unwrap();
    drop(cache);
    let end = tokio::time::timeout(Duration::from_secs(60), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "watch still open after the cache was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_follows_etcd_through_a_restart() {
    let mut etcd = Etcd::start().await;
    let inner = hull_control::store::open(&etcd.url).await.unwrap();
    let cache = cache(inner, 10_000).await;
    let p = prefix("cache-etcd-restart");
    let mut w = cache.watch(&p, 0).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(
            cache
                .create(&format!("{p}before{i}"), b"v".to_vec())
                .await
                .unwrap(),
        );
    }
    caught_up(&cache, revs[4]).await;
    etcd.restart().await;
    for i in 0..5 {
        let key = format!("{p}after{i}");
        // The client reconnects on its own; a write racing the reconnect may fail once.
        let mut attempt = 0;
        let rev = loop {
            match cache.create(&key, b"v".to_vec()).await {
                Ok(rev) => break rev,
                Err(StoreError::Unavailable(_)) if attempt < 100 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("write after the restart: {e}"),
            }
        };
        revs.push(rev);
    }
    let got: Vec<Revision> = suite::next_events(&mut w, 10)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(got, revs, "no event lost or repeated across the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_are_one_store() {
    let etcd = Etcd::start().await;
    let a = cache(hull_control::store::open(&etcd.url).await.unwrap(), 10_000).await;
    let b = cache(hull_control::store::open(&etcd.url).await.unwrap(), 10_000).await;
    let p = prefix("two-servers");
    let key = format!("{p}shared");
    let mut on_b = b.watch(&p, 0).await.unwrap();
    let r1 = a.create(&key, b"from a".to_vec()).await.unwrap();
    // B sees A's write, at A's revision.
    let kv = b.get(&key).await.unwrap().expect("B reads A's write");
    assert_eq!(kv.mod_revision, r1);
    assert_eq!(suite::next_events(&mut on_b, 1).await[0].revision(), r1);
    // A write through B makes A's copy stale: compare-and-swap holds across servers.
    let r2 = b.update(&key, b"from b".to_vec(), r1).await.unwrap();
    match a.update(&key, b"stale".to_vec(), r1).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, r2),
        other => panic!("stale update through A: {other:?}"),
    }
    assert!(a.current_revision().await.unwrap() >= r2);
    let mut on_a = a.watch(&p, r1).await.unwrap();
    assert_eq!(suite::next_events(&mut on_a, 1).await[0].revision(), r2);
}
