//! The shared storage suite (`store_support::suite`) against every backend: SQLite in a
//! temp dir, a real etcd started per test on free loopback ports, and the watch cache in
//! front of each.

mod store_support;

use std::sync::Arc;

use hull_control::store::Store;
use store_support::{Backend, prefix, suite};

/// Opens the store a suite test runs on.
async fn open(backend: &Backend, cached: bool) -> Arc<dyn Store> {
    if cached {
        backend.open_cached(10_000).await
    } else {
        backend.open().await
    }
}

macro_rules! suite_tests {
    ($module:ident, $backend:expr, cached = $cached:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $backend.await;
                    let store = open(&backend, $cached).await;
                    suite::$case(&store, &prefix(concat!(stringify!($module), "-", stringify!($case)))).await;
                }
            )*
        }
    };
}

suite_tests!(
    sqlite,
    Backend::sqlite(),
    cached = false,
    [
        crud,
        list_pagination,
        list_at_old_revision,
        watch_from_revision,
        watch_compacted,
        concurrent_updates,
        revisions_global_monotonic,
        large_list,
    ]
);
suite_tests!(
    etcd,
    Backend::etcd(),
    cached = false,
    [
        crud,
        list_pagination,
        list_at_old_revision,
        watch_from_revision,
        watch_compacted,
        concurrent_updates,
        revisions_global_monotonic,
        large_list,
    ]
);
// Through the watch cache: the same semantics, except that compaction is the cache's
// window (store_cache.rs tests it).
suite_tests!(
    cached_sqlite,
    Backend::sqlite(),
    cached = true,
    [
        crud,
        list_pagination,
        list_at_old_revision,
        watch_from_revision,
        concurrent_updates,
        revisions_global_monotonic,
        large_list,
    ]
);
suite_tests!(
    cached_etcd,
    Backend::etcd(),
    cached = true,
    [
        crud,
        list_pagination,
        list_at_old_revision,
        watch_from_revision,
        concurrent_updates,
        revisions_global_monotonic,
        large_list,
    ]
);
