//! The desired service ports, kept current object by object: a change to one
//! Service or to one of its EndpointSlices rebuilds that Service's ports only,
//! and reports which port ids changed, so a sync at 10 000 Services costs the
//! work for what changed rather than a pass over every object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{self, NodeInfo, RuleSet, ServicePortRule, Skipped};

/// (namespace, name) of a Service.
pub type ServiceKey = (String, String);

#[derive(Debug, Default)]
pub struct Ports {
    node: NodeInfo,
    /// Port id → its rule, for every port of every Service.
    ports: BTreeMap<String, Arc<ServicePortRule>>,
    /// Service → the ids of its ports.
    of_service: HashMap<ServiceKey, Vec<String>>,
    /// Service → what of it was skipped (bad fields), as last built.
    skipped: HashMap<ServiceKey, Vec<Skipped>>,
}

impl Ports {
    pub fn new(node: NodeInfo) -> Ports {
        Ports {
            node,
            ..Default::default()
        }
    }

    /// Rebuild everything from the objects (start, relist).
    pub fn rebuild<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) {
        let by_service = model::slices_by_service(slices);
        self.ports.clear();
        self.of_service.clear();
        self.skipped.clear();
        for svc in services {
            let key = key_of(svc);
            let mine = by_service
                .get(&(key.0.as_str(), key.1.as_str()))
                .cloned()
                .unwrap_or_default();
            self.update(key, Some(svc), &mine);
        }
    }

    /// Rebuild one Service's ports (`svc` None: it is gone). Returns the ids of
    /// the ports that were added, changed or removed.
    pub fn update(
        &mut self,
        key: ServiceKey,
        svc: Option<&Service>,
        slices: &[&EndpointSlice],
    ) -> Vec<String> {
        let mut rs = RuleSet::default();
        if let Some(svc) = svc {
            model::build_service(svc, slices, &self.node, &mut rs);
        }
        let old_ids = self.of_service.remove(&key).unwrap_or_default();
        let mut changed = Vec::new();
        let mut new_ids = Vec::with_capacity(rs.ports.len());
        for r in rs.ports {
            let id = r.id();
            if self.ports.get(&id).is_none_or(|o| **o != r) {
                changed.push(id.clone());
                self.ports.insert(id.clone(), Arc::new(r));
            }
            new_ids.push(id);
        }
        for id in old_ids {
            if !new_ids.contains(&id) {
                self.ports.remove(&id);
                changed.push(id);
            }
        }
        if !new_ids.is_empty() {
            self.of_service.insert(key.clone(), new_ids);
        }
        if rs.skipped.is_empty() {
            self.skipped.remove(&key);
        } else {
            self.skipped.insert(key, rs.skipped);
        }
        changed
    }

    pub fn get(&self, id: &str) -> Option<&ServicePortRule> {
        self.ports.get(id).map(|r| &**r)
    }

    /// Every port, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &ServicePortRule> + Clone {
        self.ports.values().map(|r| &**r)
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Everything skipped, by Service.
    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped.values().flatten()
    }

    /// The skipped fields of `keys` (to log what a sync just met).
    pub fn skipped_of<'a>(
        &'a self,
        keys: &'a BTreeSet<ServiceKey>,
    ) -> impl Iterator<Item = &'a Skipped> {
        keys.iter().filter_map(|k| self.skipped.get(k)).flatten()
    }
}

/// The key of a Service object.
pub fn key_of(svc: &Service) -> ServiceKey {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}
