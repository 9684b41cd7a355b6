//! The RBAC objects held in memory for the authorizer: listed from the store on start and
//! kept current by one store watch per kind (the store's watch cache makes these cheap),
//! re-listed after a compaction or a broken watch. Reads never touch the store, so
//! authorization is a lock and a few hash lookups.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

use crate::store::{Store, StoreError, WatchEvent};

/// The four RBAC kinds, each keyed by its store key (`/registry/roles/ns/name`).
#[derive(Default)]
pub struct Snapshot {
    pub roles: HashMap<String, Role>,
    pub role_bindings: HashMap<String, RoleBinding>,
    pub cluster_roles: HashMap<String, ClusterRole>,
    pub cluster_role_bindings: HashMap<String, ClusterRoleBinding>,
}

#[derive(Clone, Copy)]
enum Kind {
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
}

const KINDS: [(Kind, &str); 4] = [
    (Kind::Role, "/registry/roles/"),
    (Kind::RoleBinding, "/registry/rolebindings/"),
    (Kind::ClusterRole, "/registry/clusterroles/"),
    (Kind::ClusterRoleBinding, "/registry/clusterrolebindings/"),
];

impl Snapshot {
    fn put(&mut self, kind: Kind, key: &str, value: &[u8]) {
        // An object that does not decode is skipped (admission validates RBAC objects, so
        // only a store edited by hand can hold one); it grants nothing.
        let key = key.to_string();
        match kind {
            Kind::Role => {
                if let Ok(v) = serde_json::from_slice(value) {
                    self.roles.insert(key, v);
                }
            }
            Kind::RoleBinding => {
                if let Ok(v) = serde_json::from_slice(value) {
                    self.role_bindings.insert(key, v);
                }
            }
            Kind::ClusterRole => {
                if let Ok(v) = serde_json::from_slice(value) {
                    self.cluster_roles.insert(key, v);
                }
            }
            Kind::ClusterRoleBinding => {
                if let Ok(v) = serde_json::from_slice(value) {
                    self.cluster_role_bindings.insert(key, v);
                }
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &str) {
        match kind {
            Kind::Role => drop(self.roles.remove(key)),
            Kind::RoleBinding => drop(self.role_bindings.remove(key)),
            Kind::ClusterRole => drop(self.cluster_roles.remove(key)),
            Kind::ClusterRoleBinding => drop(self.cluster_role_bindings.remove(key)),
        }
    }

    fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Role => self.roles.clear(),
            Kind::RoleBinding => self.role_bindings.clear(),
            Kind::ClusterRole => self.cluster_roles.clear(),
            Kind::ClusterRoleBinding => self.cluster_role_bindings.clear(),
        }
    }

    pub fn cluster_role(&self, name: &str) -> Option<&ClusterRole> {
        self.cluster_roles
            .get(&format!("/registry/clusterroles/{name}"))
    }

    pub fn role(&self, ns: &str, name: &str) -> Option<&Role> {
        self.roles.get(&format!("/registry/roles/{ns}/{name}"))
    }
}

/// The shared, always-current RBAC objects.
pub struct RbacCache {
    snapshot: RwLock<Snapshot>,
}

impl RbacCache {
    /// Lists every RBAC object, then keeps them current until `shutdown` flips to true.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<Self>, StoreError> {
        let cache = Arc::new(RbacCache {
            snapshot: RwLock::new(Snapshot::default()),
        });
        for (kind, prefix) in KINDS {
            let rev = cache.relist(store.as_ref(), kind, prefix).await?;
            let (c, s, mut stop) = (cache.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.wait_for(|v| *v) => {}
                    _ = c.follow(s, kind, prefix, rev) => {}
                }
            });
        }
        Ok(cache)
    }

    /// Read access to the current objects.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn relist(&self, store: &dyn Store, kind: Kind, prefix: &str) -> Result<i64, StoreError> {
        let list = store.list(prefix, None, 0, 0).await?;
        let mut snap = self.write();
        snap.clear(kind);
        for kv in &list.items {
            snap.put(kind, &kv.key, &kv.value);
        }
        Ok(list.revision)
    }

    async fn follow(&self, store: Arc<dyn Store>, kind: Kind, prefix: &str, mut rev: i64) {
        loop {
            match store.watch(prefix, rev).await {
                Ok(mut events) => {
                    while let Some(ev) = events.next().await {
                        let Ok(ev) = ev else { break };
                        rev = ev.revision();
                        let mut snap = self.write();
                        match &ev {
                            WatchEvent::Put { kv, .. } => snap.put(kind, &kv.key, &kv.value),
                            WatchEvent::Delete { kv } => snap.remove(kind, &kv.key),
                        }
                    }
                }
                Err(e) => tracing::debug!(prefix, "RBAC watch: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.relist(store.as_ref(), kind, prefix).await {
                Ok(r) => rev = r,
                Err(e) => tracing::warn!(prefix, "RBAC re-list failed: {e}"),
            }
        }
    }
}
