//! The ServiceAccount controller: a `default` ServiceAccount in every namespace that is
//! not terminating, recreated if deleted (kube-controller-manager's
//! "serviceaccount-controller").

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::util::{self, Queue, SyncResult};
use crate::manager::{Context, LoopFuture};

pub const NAME: &str = "serviceaccount-controller";
const DEFAULT_SA: &str = "default";

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

async fn run(ctx: Arc<Context>) {
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
    let (accounts, sa_informer) = util::informer(
        Api::<ServiceAccount>::all(ctx.client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SA}")),
        move |old: Option<&ServiceAccount>, new| {
            // Only a deleted `default` account needs work: its namespace gets a new one.
            if let (Some(sa), None) = (old, new)
                && let Some(ns) = sa.metadata.namespace.clone()
            {
                q.add(ns);
            }
        },
    );
    let sync = {
        let ctx = ctx.clone();
        let (namespaces, accounts) = (namespaces.clone(), accounts.clone());
        move |ns: String| {
            let (ctx, namespaces, accounts) = (ctx.clone(), namespaces.clone(), accounts.clone());
            async move { sync(&ctx, &namespaces, &accounts, &ns).await }
        }
    };
    let workers = async {
        let _ = namespaces.wait_until_ready().await;
        let _ = accounts.wait_until_ready().await;
        util::run_workers(queue, 2, NAME, sync).await;
    };
    tokio::join!(ns_informer, sa_informer, workers);
}

async fn sync(
    ctx: &Context,
    namespaces: &Store<Namespace>,
    accounts: &Store<ServiceAccount>,
    ns: &str,
) -> SyncResult {
    let Some(namespace) = namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(None);
    };
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating
        || accounts
            .get(&ObjectRef::new(DEFAULT_SA).within(ns))
            .is_some()
    {
        return Ok(None);
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SA.into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(None),
        Err(e) if util::is_already_exists(&e) => Ok(None),
        // The namespace began terminating (or vanished) meanwhile: nothing to do.
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(None),
        Err(e) => Err(format!("creating ServiceAccount {ns}/{DEFAULT_SA}: {e}")),
    }
}
