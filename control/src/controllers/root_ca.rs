//! The root CA publisher: a `kube-root-ca.crt` ConfigMap (key `ca.crt` = the cluster CA)
//! in every namespace that is not terminating, put back if deleted or edited
//! (kube-controller-manager's "root-ca-cert-publisher"). Pods read it through the
//! `kube-api-access-*` projected volume to verify the API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::util::{self, Queue, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "root-ca-cert-publisher";
pub const CONFIGMAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
    let Some(ca) = ctx.options.root_ca_pem.clone() else {
        tracing::warn!("no cluster CA given to the controller manager: {NAME} is off");
        return;
    };
    let queue: Arc<Queue<String>> = Queue::new();
    let q = queue.clone();
    let (namespaces, ns_informer) = util::informer(
        Api::<Namespace>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |_, new: Option<&Namespace>| {
            if let Some(ns) = new {
                q.add(util::key_of(ns));
            }
        },
    );
    let q = queue.clone();
    let (maps, cm_informer) = util::informer(
        Api::<ConfigMap>::all(ctx.client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}")),
        move |old: Option<&ConfigMap>, new: Option<&ConfigMap>| {
            // Deleted or edited: its namespace is looked at again.
            if let Some(ns) = new.or(old).and_then(|c| c.metadata.namespace.clone()) {
                q.add(ns);
            }
        },
    );
    let sync = {
        let (ctx, namespaces, maps, ca) = (ctx.clone(), namespaces.clone(), maps.clone(), ca);
        move |ns: String| {
            let (ctx, namespaces, maps, ca) =
                (ctx.clone(), namespaces.clone(), maps.clone(), ca.clone());
            async move { sync(&ctx, &namespaces, &maps, &ca, &ns).await }
        }
    };
    let workers = async {
        let _ = namespaces.wait_until_ready().await;
        let _ = maps.wait_until_ready().await;
        util::run_workers(queue, 2, NAME, sync).await;
    };
    tokio::join!(ns_informer, cm_informer, workers);
}

async fn sync(
    ctx: &Context,
    namespaces: &Store<Namespace>,
    maps: &Store<ConfigMap>,
    ca: &str,
    ns: &str,
) -> SyncResult {
    let Some(namespace) = namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(None);
    };
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let data = BTreeMap::from([("ca.crt".to_string(), ca.to_string())]);
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns);
    let existing = maps.get(&ObjectRef::new(CONFIGMAP).within(ns));
    let written = match existing {
        Some(cm) if cm.data.as_ref() == Some(&data) => return Ok(None),
        Some(cm) => {
            let mut cm = (*cm).clone();
            cm.data = Some(data);
            cm.binary_data = None;
            api.replace(CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map(|_| ())
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIGMAP.into()),
                    namespace: Some(ns.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Err(e) if util::is_already_exists(&e) => Ok(()),
                r => r.map(|_| ()),
            }
        }
    };
    match written {
        Ok(()) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(None),
        Err(e) => Err(format!("publishing {ns}/{CONFIGMAP}: {e}")),
    }
}
