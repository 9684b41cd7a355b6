//! The etcd v3 backend: the store kube-apiserver itself uses, for multi-server clusters.
//!
//! Each [`Store`] call is one etcd request. Writes are transactions that compare the key's
//! `create_revision` (create) or `mod_revision` (update, delete) and, when the compare
//! fails, read the key in the same transaction so the error can say what is there.
//! Several `hull server`s on one etcd see one revision sequence and one history.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, TxnOp,
    TxnOpResponse, WatchClient, WatchOptions,
};
use futures::StreamExt;

use super::{KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream};
use crate::store::prefix_end;

/// How long to wait for etcd to answer before calling it unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted: a list of 10,000 pods is ~15 MiB, far over gRPC's default of
/// 4 MiB. kube-apiserver lifts the limit the same way.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    kv: KvClient,
    watcher: WatchClient,
    endpoints: Vec<String>,
}

fn map_err(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                // etcd does not say which revision it compacted to; the caller only needs
                // to know that it is at least the one asked for.
                StoreError::Compacted {
                    requested: 0,
                    compacted: 0,
                }
            } else if msg.contains("required revision is a future revision")
                || matches!(
                    status.code() as i32,
                    GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED
                )
            {
                StoreError::Unavailable(format!("etcd: {msg}"))
            } else {
                StoreError::Internal(format!("etcd: {msg}"))
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::Unavailable(format!("etcd: {e}"))
        }
        _ => StoreError::Internal(format!("etcd: {e}")),
    }
}

/// gRPC status codes (etcd-client does not re-export tonic's `Code`).
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

fn with_requested(e: StoreError, requested: Revision) -> StoreError {
    match e {
        StoreError::Compacted { .. } => StoreError::Compacted {
            requested,
            compacted: requested,
        },
        e => e,
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| StoreError::Internal(format!("etcd key is not UTF-8: {e}")))?
            .to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Internal("etcd response without a header".into()))
}

impl EtcdStore {
    /// Connects to `endpoints` (`host:port`, with or without `http://`) and checks that
    /// etcd answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("etcd at {}: {e}", endpoints.join(",")))
            })?;
        let store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watcher: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            endpoints: endpoints.to_vec(),
        };
        store.current_revision().await.map_err(|e| {
            StoreError::Unavailable(format!("etcd at {}: {e}", store.endpoints.join(",")))
        })?;
        Ok(store)
    }

    /// Fails with Compacted if events after `after` are gone. etcd accepts a watch on a
    /// compacted revision and cancels it only on its next sync, so a read at the first
    /// revision the watch needs is the synchronous check.
    async fn check_not_compacted(&self, after: Revision) -> Result<(), StoreError> {
        let options = GetOptions::new().with_count_only().with_revision(after + 1);
        match self.kv.clone().get("/", Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(e) {
                StoreError::Compacted { .. } => Err(StoreError::Compacted {
                    requested: after,
                    compacted: after + 1,
                }),
                // after+1 is in the future: nothing to miss, the watch waits for it.
                StoreError::Unavailable(msg) if msg.contains("future revision") => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The key's current value, read in a transaction's failure branch.
    fn failed_get(responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>, StoreError> {
        for response in responses {
            if let TxnOpResponse::Get(get) = response {
                return get.kvs().first().map(to_kv).transpose();
            }
        }
        Ok(None)
    }

    /// Runs `compare ? success : get(key)`; `Ok(Err(current))` when the compare failed.
    async fn cas(
        &self,
        key: &str,
        compare: Compare,
        success: TxnOp,
    ) -> Result<Result<etcd_client::TxnResponse, Option<KeyValue>>, StoreError> {
        let txn = etcd_client::Txn::new()
            .when([compare])
            .and_then([success])
            .or_else([TxnOp::get(key, None)]);
        let response = self.kv.clone().txn(txn).await.map_err(map_err)?;
        if response.succeeded() {
            Ok(Ok(response))
        } else {
            Ok(Err(Self::failed_get(response.op_responses())?))
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.kv.clone().get(key, None).await.map_err(map_err)?;
        response.kvs().first().map(to_kv).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Revision,
    ) -> Result<ListResult, StoreError> {
        let start = match start_after {
            Some(after) if after >= prefix => format!("{after}\0"),
            _ => prefix.to_owned(),
        };
        let mut options = GetOptions::new()
            .with_limit(limit as i64)
            .with_revision(revision.max(0));
        // An empty prefix means every key: etcd spells that end as "\0".
        options = match prefix_end(prefix) {
            Some(end) => options.with_range(end),
            None => options.with_range(vec![0u8]),
        };
        let response = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(|e| with_requested(map_err(e), revision))?;
        let items = response
            .kvs()
            .iter()
            .map(to_kv)
            .collect::<Result<Vec<_>, _>>()?;
        let at = if revision > 0 {
            revision
        } else {
            header_revision(response.header())?
        };
        Ok(ListResult {
            remaining: (response.count() - items.len() as i64).max(0),
            items,
            revision: at,
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self
            .kv
            .clone()
            .get(prefix, Some(options))
            .await
            .map_err(map_err)?;
        Ok(response.count())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let compare = Compare::create_revision(key, CompareOp::Equal, 0);
        match self.cas(key, compare, TxnOp::put(key, value, None)).await? {
            Ok(response) => header_revision(response.header()),
            Err(_) => Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            }),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let compare = Compare::mod_revision(key, CompareOp::Equal, expected);
        match self.cas(key, compare, TxnOp::put(key, value, None)).await? {
            Ok(response) => header_revision(response.header()),
            Err(None) => Err(StoreError::NotFound {
                key: key.to_owned(),
            }),
            Err(Some(current)) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current.mod_revision,
            }),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue), StoreError> {
        let compare = match expected {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let delete = TxnOp::delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()));
        match self.cas(key, compare, delete).await? {
            Ok(response) => {
                let revision = header_revision(response.header())?;
                let prev = response.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().cloned(),
                    _ => None,
                });
                // Another writer can delete between compare and delete only in a different
                // revision; a successful compare means the key existed, so prev is there.
                let prev = prev.ok_or_else(|| StoreError::NotFound {
                    key: key.to_owned(),
                })?;
                let mut kv = to_kv(&prev)?;
                kv.mod_revision = revision;
                Ok((revision, kv))
            }
            Err(None) => Err(StoreError::NotFound {
                key: key.to_owned(),
            }),
            Err(Some(current)) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: expected.unwrap_or(0),
                actual: current.mod_revision,
            }),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new().with_prev_key();
        options = match prefix_end(prefix) {
            Some(end) => options.with_range(end),
            None => options.with_range(vec![0u8]),
        };
        if after > 0 {
            options = options.with_start_revision(after + 1);
            self.check_not_compacted(after).await?;
        }
        let mut stream = self
            .watcher
            .clone()
            .watch(prefix, Some(options))
            .await
            .map_err(map_err)?;
        // Wait for etcd to accept the watch, so a compacted start is an error of this call
        // (the API server answers 410 before it starts streaming).
        let mut first_events = Vec::new();
        loop {
            let response = stream
                .message()
                .await
                .map_err(map_err)?
                .ok_or_else(|| StoreError::Unavailable("etcd closed the watch".into()))?;
            if response.canceled() {
                return Err(cancelled(&response, after));
            }
            first_events.extend(convert_events(&response));
            if response.created() {
                break;
            }
        }
        let events = futures::stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            let result = match stream.message().await {
                Ok(Some(response)) if response.canceled() => Err(cancelled(&response, after)),
                Ok(Some(response)) => Ok(convert_events(&response)),
                Ok(None) => return None,
                Err(e) => Err(map_err(e)),
            };
            match result {
                Ok(events) => Some((futures::stream::iter(events).boxed(), Some(stream))),
                Err(e) => Some((futures::stream::iter([Err(e)]).boxed(), None)),
            }
        })
        .flatten();
        Ok(futures::stream::iter(first_events).chain(events).boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let options = GetOptions::new().with_count_only();
        let response = self
            .kv
            .clone()
            .get("/", Some(options))
            .await
            .map_err(map_err)?;
        header_revision(response.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.kv.clone().compact(revision, None).await {
            Ok(_) => Ok(()),
            // Compacting to where another server already compacted is done, not an error.
            Err(e) => match map_err(e) {
                StoreError::Compacted { .. } => Ok(()),
                e => Err(e),
            },
        }
    }
}

fn cancelled(response: &etcd_client::WatchResponse, after: Revision) -> StoreError {
    if response.compact_revision() > 0 {
        StoreError::Compacted {
            requested: after,
            compacted: response.compact_revision(),
        }
    } else {
        StoreError::Unavailable(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason()
        ))
    }
}

fn convert_events(response: &etcd_client::WatchResponse) -> Vec<Result<WatchEvent, StoreError>> {
    response
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            Some(convert_event(event.event_type(), kv, event.prev_kv()))
        })
        .collect()
}

fn convert_event(
    kind: EventType,
    kv: &etcd_client::KeyValue,
    prev: Option<&etcd_client::KeyValue>,
) -> Result<WatchEvent, StoreError> {
    match kind {
        EventType::Put => Ok(WatchEvent::Put {
            kv: to_kv(kv)?,
            // A put with version 1 is a create: whatever prev_kv says belongs to an older
            // incarnation (etcd sends none anyway).
            prev: prev.filter(|_| kv.version() > 1).map(to_kv).transpose()?,
        }),
        EventType::Delete => {
            // etcd's delete event carries only the key; the last value is in prev_kv.
            let mut last = match prev {
                Some(p) => to_kv(p)?,
                None => to_kv(kv)?,
            };
            last.mod_revision = kv.mod_revision();
            Ok(WatchEvent::Delete { kv: last })
        }
    }
}
