//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` every retry period; anyone may take the Lease
//! once `renewTime + leaseDurationSeconds` has passed. Every write is a compare-and-swap
//! on `resourceVersion`, so two candidates can never both believe they won.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

enum Attempt {
    Held,
    HeldByOther,
    Failed(String),
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration,
            renew_deadline,
            retry_period,
        }
    }

    /// Returns once this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Attempt::Held => return,
                Attempt::HeldByOther => {}
                Attempt::Failed(e) => tracing::debug!(lease = %self.name, "acquiring: {e}"),
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// Keeps renewing; returns when the Lease could not be renewed within the deadline
    /// (or another holder took it), i.e. when leadership is lost.
    pub async fn hold(&self) {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period).await;
            match self.try_acquire_or_renew().await {
                Attempt::Held => last_renew = Instant::now(),
                Attempt::HeldByOther => return,
                Attempt::Failed(e) => {
                    tracing::warn!(lease = %self.name, "renewing: {e}");
                    if last_renew.elapsed() > self.renew_deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up on a clean stop, so another server need not wait it out.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let _ = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
    }

    async fn try_acquire_or_renew(&self) -> Attempt {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let current = match self.api.get_opt(&self.name).await {
            Ok(c) => c,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Attempt::Held,
                Err(kube::Error::Api(s)) if s.code == 409 => Attempt::HeldByOther,
                Err(e) => Attempt::Failed(e.to_string()),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        if !ours
            && spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
        {
            let expiry = spec.renew_time.as_ref().map(|t| {
                t.0 + jiff::SignedDuration::from_secs(i64::from(
                    spec.lease_duration_seconds.unwrap_or(secs),
                ))
            });
            if expiry.is_some_and(|e| e > Timestamp::now()) {
                return Attempt::HeldByOther;
            }
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Attempt::Held,
            Err(kube::Error::Api(s)) if s.code == 409 => Attempt::HeldByOther,
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }
}
