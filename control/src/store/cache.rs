//! The watch cache: one store watch fanned out to many watchers.
//!
//! A thousand `kubectl get -w`, informers and node agents would otherwise be a thousand
//! store watches (a thousand SQLite log scans or etcd watch streams). [`CachedStore`] keeps
//! one watch on its prefix (`/registry/`), remembers a window of recent events in a ring
//! buffer, and serves each watcher from the ring (for watch-from-revision) and then from a
//! broadcast channel. A watch from before the window gets [`StoreError::Compacted`], which
//! the API server turns into `410 Gone` so the client re-lists, as kube-apiserver's watch
//! cache does. Reads and writes pass through to the store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream};

/// Events a watcher may fall behind the broadcast by before it catches up from the window.
const BROADCAST_CAPACITY: usize = 1024;

/// How the cache is sized.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Keys the one store watch covers; watches elsewhere go to the store directly.
    pub prefix: String,
    /// Recent events kept for watch-from-revision.
    pub window: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: "/registry/".to_owned(),
            window: 10_000,
        }
    }
}

/// What the cache broadcasts to its watchers.
#[derive(Debug)]
enum Message {
    Event(WatchEvent),
    /// The store's history was lost to the cache (its own watch was compacted away): every
    /// watcher must re-list.
    Reset {
        compacted: Revision,
    },
}

struct Window {
    events: VecDeque<Arc<Message>>,
    capacity: usize,
    /// Every event with a revision above `start` is in `events` or still to come.
    start: Revision,
    /// The newest revision the cache has seen.
    last: Revision,
}

impl Window {
    fn push(&mut self, event: WatchEvent) -> Arc<Message> {
        let revision = event.revision();
        if self.events.len() == self.capacity
            && let Some(evicted) = self.events.pop_front()
            && let Message::Event(ev) = &*evicted
        {
            self.start = ev.revision();
        }
        let message = Arc::new(Message::Event(event));
        self.events.push_back(message.clone());
        self.last = self.last.max(revision);
        message
    }

    /// Events under `prefix` after `after`, or Compacted if the window no longer has them.
    fn since(&self, prefix: &str, after: Revision) -> Result<Vec<WatchEvent>, StoreError> {
        if after < self.start {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: self.start,
            });
        }
        Ok(self
            .events
            .iter()
            .filter_map(|m| match &**m {
                Message::Event(ev) if ev.revision() > after && ev.kv().key.starts_with(prefix) => {
                    Some(ev.clone())
                }
                _ => None,
            })
            .collect())
    }
}

/// A new watcher's place in the event sequence.
struct Subscription {
    receiver: broadcast::Receiver<Arc<Message>>,
    /// Window events after `after`, to deliver before the broadcast's.
    backlog: Vec<WatchEvent>,
    after: Revision,
}

struct Shared {
    window: Mutex<Window>,
    /// Sent while `window` is locked, so a subscriber that snapshots the window under the
    /// same lock sees every event exactly once.
    sender: broadcast::Sender<Arc<Message>>,
    prefix: String,
}

impl Shared {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Window>, StoreError> {
        self.window
            .lock()
            .map_err(|_| StoreError::Internal("watch cache mutex poisoned".into()))
    }

    /// Subscribes and returns the window's events under `prefix` after `after`.
    fn subscribe(&self, prefix: &str, after: Revision) -> Result<Subscription, StoreError> {
        let window = self.lock()?;
        let after = if after <= 0 { window.last } else { after };
        let backlog = window.since(prefix, after)?;
        Ok(Subscription {
            receiver: self.sender.subscribe(),
            backlog,
            after,
        })
    }
}

/// A [`Store`] whose watches under one prefix share a single store watch.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        // Ends the feeding task; watchers then see their streams end (the sender goes with
        // the last strong reference).
        self.task.abort();
    }
}

impl CachedStore {
    /// Starts the cache's store watch at the store's current revision.
    pub async fn new(
        inner: Arc<dyn Store>,
        config: CacheConfig,
    ) -> Result<CachedStore, StoreError> {
        let start = inner.current_revision().await?;
        let stream = inner.watch(&config.prefix, start).await?;
        let capacity = config.window.max(1);
        let (sender, _) = broadcast::channel(capacity.min(BROADCAST_CAPACITY));
        let shared = Arc::new(Shared {
            window: Mutex::new(Window {
                events: VecDeque::with_capacity(capacity.min(4096)),
                capacity,
                start,
                last: start,
            }),
            sender,
            prefix: config.prefix,
        });
        let task = tokio::spawn(feed(inner.clone(), Arc::downgrade(&shared), stream));
        Ok(CachedStore {
            inner,
            shared,
            task,
        })
    }

    /// The store this cache fronts.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// The newest revision the cache has delivered to its watchers.
    pub fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.lock()?.last)
    }

    /// How many watchers are attached now.
    pub fn watchers(&self) -> usize {
        self.shared.sender.receiver_count()
    }
}

/// Follows the store watch into the window, re-watching from the last revision seen when
/// the store watch breaks (an etcd restart), and resetting every watcher if the store has
/// compacted past it.
async fn feed(inner: Arc<dyn Store>, shared: Weak<Shared>, mut stream: WatchStream) {
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Some(item) = stream.next().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match item {
                Ok(event) => {
                    backoff = Duration::from_millis(100);
                    let Ok(mut window) = shared.window.lock() else {
                        return;
                    };
                    if event.revision() <= window.last {
                        continue;
                    }
                    let message = window.push(event);
                    // No receivers is fine: nobody is watching right now.
                    let _ = shared.sender.send(message);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: store watch failed; re-watching");
                    break;
                }
            }
        }
        // The store watch ended: start another from where this one stopped.
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let last = match shared.lock() {
                Ok(w) => w.last,
                Err(_) => return,
            };
            match inner.watch(&shared.prefix, last).await {
                Ok(s) => {
                    stream = s;
                    break;
                }
                Err(StoreError::Compacted { .. }) => {
                    if let Err(e) = reset(&inner, &shared).await {
                        tracing::warn!(error = %e, "watch cache: reset failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch cache: re-watch failed"),
            }
            drop(shared);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Empties the window at the store's current revision and tells every watcher to re-list.
async fn reset(inner: &Arc<dyn Store>, shared: &Shared) -> Result<(), StoreError> {
    let current = inner.current_revision().await?;
    let mut window = shared.lock()?;
    window.events.clear();
    window.start = current;
    window.last = current;
    let _ = shared
        .sender
        .send(Arc::new(Message::Reset { compacted: current }));
    Ok(())
}

/// A watcher: its backlog from the window, then the broadcast, filtered to its prefix.
fn watcher(shared: Weak<Shared>, prefix: String, sub: Subscription) -> WatchStream {
    struct State {
        shared: Weak<Shared>,
        prefix: String,
        last: Revision,
        receiver: broadcast::Receiver<Arc<Message>>,
        pending: VecDeque<WatchEvent>,
        done: bool,
    }
    let state = State {
        shared,
        prefix,
        last: sub.after,
        receiver: sub.receiver,
        pending: sub.backlog.into(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(ev) = st.pending.pop_front() {
                st.last = ev.revision();
                return Some((Ok(ev), st));
            }
            match st.receiver.recv().await {
                Ok(message) => match &*message {
                    Message::Event(ev)
                        if ev.revision() > st.last && ev.kv().key.starts_with(&st.prefix) =>
                    {
                        st.pending.push_back(ev.clone());
                    }
                    Message::Event(_) => {}
                    Message::Reset { compacted } => {
                        st.done = true;
                        let err = StoreError::Compacted {
                            requested: st.last,
                            compacted: *compacted,
                        };
                        return Some((Err(err), st));
                    }
                },
                // Too slow for the broadcast: catch up from the window if it still has our
                // events, else the client must re-list.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let shared = st.shared.upgrade()?;
                    match shared.subscribe(&st.prefix, st.last) {
                        Ok(sub) => {
                            st.receiver = sub.receiver;
                            st.pending.extend(sub.backlog);
                        }
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

#[async_trait::async_trait]
impl Store for CachedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Revision,
    ) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, start_after, limit, revision).await
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.inner.create(key, value).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.inner.update(key, value, expected).await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue), StoreError> {
        self.inner.delete(key, expected).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        if !prefix.starts_with(&self.shared.prefix) {
            return self.inner.watch(prefix, after).await;
        }
        let after = if after <= 0 {
            // "From now" is the store's now, not the cache's: a client that just wrote
            // must not see its own write as a new event.
            self.inner.current_revision().await?
        } else {
            after
        };
        let sub = self.shared.subscribe(prefix, after)?;
        Ok(watcher(
            Arc::downgrade(&self.shared),
            prefix.to_owned(),
            sub,
        ))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}
