//! The admission chain for one write, in kube-apiserver's order: namespace lifecycle,
//! defaults, LimitRanger, validation, ResourceQuota, ClusterIP/NodePort allocation.

use std::collections::BTreeMap;

use serde_json::Value;

use super::allocator::{Allocation, Allocators};
use super::quantity::Quantity;
use super::{AdmissionError, default, defaults, limitrange, namespace, quota, validate};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// What is being written.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub operation: Operation,
    /// API group (`""` for core, `apps`, ...).
    pub group: &'a str,
    pub version: &'a str,
    /// `Pod`, `Deployment`, ...
    pub kind: &'a str,
    /// The plural resource (`pods`): also the store key segment.
    pub resource: &'a str,
    /// `status`, `scale`, `binding`, ...: only defaults and validation run for these.
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// Check everything, persist nothing (no quota charge, no allocation).
    pub dry_run: bool,
}

/// What an admitted write took from shared state, to give back if the write fails
/// ([`Admitted::undo`]) or to settle once it is stored ([`Admitted::commit`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admitted {
    pub charges: Vec<quota::Charge>,
    pub allocation: Allocation,
    /// Quota usage the update frees (e.g. a pod that finished).
    pub freed: BTreeMap<String, Quantity>,
    namespace: String,
    resource: String,
    /// The object before the update (quota scopes are judged on it when freeing).
    old: Option<Value>,
}

impl Admitted {
    /// The store write failed or was not attempted: return quota and allocations.
    pub async fn undo(&self, store: &dyn Store) -> Result<(), StoreError> {
        quota::undo(store, &self.charges).await?;
        self.allocation.undo(store).await
    }

    /// The store write succeeded: free what the old object held and the new does not.
    pub async fn commit(&self, store: &dyn Store) -> Result<(), StoreError> {
        self.allocation.commit(store).await?;
        match &self.old {
            Some(old) if !self.freed.is_empty() => {
                quota::release_usage(store, &self.namespace, &self.resource, old, &self.freed).await
            }
            _ => Ok(()),
        }
    }
}

/// Admission with its configuration (the service CIDR and NodePort range).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub allocators: Allocators,
}

impl Admission {
    pub fn new(allocators: Allocators) -> Admission {
        Admission { allocators }
    }

    /// Mutating then validating admission of `obj` (`old` is the stored object on
    /// update; both are ignored on delete). On success the caller stores `obj`, then calls
    /// [`Admitted::commit`] — or [`Admitted::undo`] if the store write fails.
    pub async fn admit(
        &self,
        store: &dyn Store,
        req: &Request<'_>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Admitted, AdmissionError> {
        namespace::check_write(store, req.operation, req.resource, req.namespace, req.name).await?;
        if req.operation == Operation::Delete {
            return Ok(Admitted::default());
        }
        default(req.kind, obj);
        let main = req.subresource.is_none();
        let ns = req.namespace.unwrap_or_default();
        if main && req.operation == Operation::Create && req.kind == "Pod" && !ns.is_empty() {
            limitrange::apply_defaults(store, ns, obj).await?;
            // The QoS class follows the resources LimitRanger may just have set.
            let qos = defaults::qos_class(obj.get("spec"));
            if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
                status.insert("qosClass".into(), Value::from(qos));
            }
        }
        if main
            && req.operation == Operation::Create
            && req.kind == "PersistentVolumeClaim"
            && !ns.is_empty()
        {
            limitrange::check_claim(store, ns, obj).await?;
        }
        if let (true, "Service", Some(old)) = (main, req.kind, old) {
            Allocators::carry_over(obj, old);
        }
        validate(req.kind, obj, old)?;
        let mut admitted = Admitted {
            namespace: ns.to_string(),
            ..Admitted::default()
        };
        if ns.is_empty() {
            return Ok(admitted);
        }
        if let Some(old) = old {
            admitted.freed = quota::freed_by_update(req.resource, req.group, obj, old);
            if !admitted.freed.is_empty() {
                admitted.resource = req.resource.to_string();
                admitted.old = Some(old.clone());
            }
        }
        if !main {
            return Ok(admitted);
        }
        if req.kind == "ResourceQuota" {
            let spec_changed =
                old.is_none_or(|o| o.pointer("/spec/hard") != obj.pointer("/spec/hard"));
            if spec_changed {
                quota::init_status(store, ns, obj).await?;
            }
        }
        admitted.charges = quota::charge(
            store,
            req.resource,
            req.group,
            ns,
            req.name,
            obj,
            old,
            req.dry_run,
        )
        .await?;
        if req.kind == "Service" {
            match self.allocators.allocate(store, obj, old, req.dry_run).await {
                Ok(a) => admitted.allocation = a,
                Err(e) => {
                    quota::undo(store, &admitted.charges).await?;
                    return Err(e);
                }
            }
        }
        Ok(admitted)
    }

    /// After an object was removed from the store: release its quota usage and, for a
    /// Service, its ClusterIP and NodePorts.
    pub async fn deleted(
        &self,
        store: &dyn Store,
        resource: &str,
        group: &str,
        namespace: Option<&str>,
        obj: &Value,
    ) -> Result<(), StoreError> {
        if let Some(ns) = namespace {
            quota::release(store, resource, group, ns, obj).await?;
        }
        if resource == "services" && group.is_empty() {
            self.allocators.release(store, obj).await?;
        }
        Ok(())
    }
}
