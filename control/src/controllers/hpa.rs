//! The HorizontalPodAutoscaler controller (autoscaling/v2), after kube-controller-manager's
//! podautoscaler. Every `hpa_sync_period` (15 s) and whenever an HPA changes, each HPA:
//!
//! 1. resolves `scaleTargetRef` (apiVersion + kind, through discovery) and reads the
//!    target's `scale` subresource (Deployment, ReplicaSet, StatefulSet,
//!    ReplicationController, or any resource serving `scale`);
//! 2. with the current count inside [minReplicas, maxReplicas], computes a count per
//!    metric from the target's pods (the scale's selector, from the shared pod informer)
//!    and their metrics.k8s.io usage (`hpa_replicas`), keeping the largest; a count
//!    outside the bounds is brought back to them;
//! 3. stabilizes and rate-limits it (`hpa_behavior`), writes the scale when it changed
//!    (Event `SuccessfulRescale`), and writes the status: current/desired replicas,
//!    currentMetrics, lastScaleTime and the AbleToScale / ScalingActive / ScalingLimited
//!    conditions (`hpa_status`).
//!
//! Only Resource and ContainerResource metrics (cpu, memory) are served: hull has no
//! custom or external metrics API, so Pods, Object and External metrics report
//! `FailedGet…Metric` and count as invalid, as they would upstream without an adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricSpec, MetricStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::hpa_behavior::{Behavior, History};
use super::hpa_metrics;
use super::hpa_replicas::{Calculator, Tolerances};
use super::hpa_status::{
    self as status, ABLE_TO_SCALE, Condition, SCALING_ACTIVE, SCALING_LIMITED,
};
use super::util::{self, Queue, Recorder, SyncResult};
use crate::admission::quantity::Quantity;
use crate::apiserver::rest::selector::LabelSelector;
use crate::manager::{Context, LoopFuture};

/// The Events' reporter, as kube-controller-manager's.
pub const NAME: &str = "horizontal-pod-autoscaler";

pub fn start(ctx: Arc<Context>) -> LoopFuture {
    Box::pin(run(ctx))
}

struct Controller {
    ctx: Arc<Context>,
    pods: Store<Pod>,
    recorder: Recorder,
    /// Per HPA key: recent recommendations and scale events (in memory, as upstream).
    histories: Mutex<HashMap<String, History>>,
    /// (apiVersion, kind) → the resource serving it.
    targets: Mutex<HashMap<(String, String), ApiResource>>,
}

async fn run(ctx: Arc<Context>) {
    let queue: Arc<Queue<String>> = Queue::new();
    let controller = Arc::new(Controller {
        pods: ctx.informers.pods.store(),
        recorder: Recorder::new(ctx.client.clone(), NAME),
        histories: Mutex::new(HashMap::new()),
        targets: Mutex::new(HashMap::new()),
        ctx: ctx.clone(),
    });
    let (q, c) = (queue.clone(), controller.clone());
    let (hpas, informer) = util::informer(
        Api::<HorizontalPodAutoscaler>::all(ctx.client.clone()),
        watcher::Config::default(),
        move |old: Option<&HorizontalPodAutoscaler>, new: Option<&HorizontalPodAutoscaler>| {
            match new {
                Some(n) if old.map(|o| &o.spec) != Some(&n.spec) => q.add(util::key_of(n)),
                Some(_) => {}
                None => {
                    if let Some(o) = old {
                        c.lock_histories().remove(&util::key_of(o));
                    }
                }
            }
        },
    );
    let resync = {
        let (queue, hpas, period) = (queue.clone(), hpas.clone(), ctx.options.hpa_sync_period);
        async move {
            let _ = hpas.wait_until_ready().await;
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                for h in hpas.state() {
                    queue.add(util::key_of(h.as_ref()));
                }
            }
        }
    };
    let sync = {
        let c = controller.clone();
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        }
    };
    let workers = async {
        let _ = hpas.wait_until_ready().await;
        let _ = controller.pods.wait_until_ready().await;
        util::run_workers(queue, 2, NAME, sync).await;
    };
    tokio::join!(informer, resync, workers);
}

/// The API's message for an error (what upstream puts in Events), else the error.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// What one HPA pass decided about its metrics.
struct Computed {
    replicas: i32,
    metric: String,
    statuses: Vec<MetricStatus>,
}

impl Controller {
    fn lock_histories(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.histories.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn target(&self, api_version: &str, kind: &str) -> Result<ApiResource, String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(ar) = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(ar.clone());
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        if version.is_empty() {
            return Err(format!("no matches for kind {kind:?} in group {group:?}"));
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = kube::discovery::pinned_kind(&self.ctx.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Discovery(_) => {
                    format!("no matches for kind {kind:?} in version {api_version:?}")
                }
                other => message(&other),
            })?;
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, ar.clone());
        Ok(ar)
    }

    async fn sync(&self, key: &str) -> SyncResult {
        let (Some(ns), name) = util::split_key(key) else {
            return Ok(None);
        };
        let api = Api::<HorizontalPodAutoscaler>::namespaced(self.ctx.client.clone(), ns);
        let Some(mut hpa) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
            self.lock_histories().remove(key);
            return Ok(None);
        };
        let original = hpa.status.clone();
        let result = self.reconcile(key, ns, &mut hpa).await;
        if hpa.status != original {
            match api.replace_status(name, &PostParams::default(), &hpa).await {
                Ok(_) => {}
                // The HPA changed meanwhile: evaluate it again on the new one.
                Err(e) if util::is_conflict(&e) => return Ok(Some(Duration::from_millis(100))),
                Err(e) if util::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(format!("updating the status of HPA {key}: {e}")),
            }
        }
        result.map(|()| None)
    }

    /// One pass over `hpa`; leaves the status to write in `hpa.status`.
    async fn reconcile(
        &self,
        key: &str,
        ns: &str,
        hpa: &mut HorizontalPodAutoscaler,
    ) -> Result<(), String> {
        let on = util::reference(hpa);
        let spec = hpa.spec.clone().unwrap_or_default();
        let mut st = hpa.status.clone().unwrap_or_default();
        let mut conds = st.conditions.take().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let reference = format!("{}/{ns}/{}", target.kind, target.name);
        let api_version = target.api_version.clone().unwrap_or_default();

        let scale = async {
            let ar = self.target(&api_version, &target.kind).await?;
            let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), ns, &ar);
            let scale = api.get_scale(&target.name).await.map_err(|e| message(&e))?;
            Ok::<_, String>((api, scale))
        }
        .await;
        let (scale_api, mut scale) = match scale {
            Ok(s) => s,
            Err(e) => {
                self.recorder.warning(&on, "FailedGetScale", &e).await;
                status::set_condition(
                    &mut conds,
                    &Condition::new(
                        ABLE_TO_SCALE,
                        false,
                        "FailedGetScale",
                        format!(
                            "the HPA controller was unable to get the target's current scale: {e}"
                        ),
                    ),
                );
                st.conditions = Some(conds);
                hpa.status = Some(st);
                return Err(format!(
                    "failed to query scale subresource for {reference}: {e}"
                ));
            }
        };
        status::set_condition(
            &mut conds,
            &Condition::new(
                ABLE_TO_SCALE,
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale",
            ),
        );
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut statuses = Vec::new();
        let mut result = Ok(());
        let (desired, rescale, reason) = if current == 0 && min != 0 {
            status::set_condition(
                &mut conds,
                &Condition::new(
                    SCALING_ACTIVE,
                    false,
                    "ScalingDisabled",
                    "scaling is disabled since the replica count of the target is zero",
                ),
            );
            (0, false, String::new())
        } else if current > max {
            (
                max,
                true,
                "Current number of replicas above Spec.MaxReplicas".into(),
            )
        } else if current < min {
            (
                min,
                true,
                "Current number of replicas below Spec.MinReplicas".into(),
            )
        } else {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            let computed = self
                .compute(hpa, ns, current, &selector, &mut conds, &on)
                .await;
            let computed = match computed {
                (Some(c), err) => {
                    if let Some(e) = err {
                        result = Err(e);
                    }
                    c
                }
                (None, err) => {
                    let e = err.unwrap_or_default();
                    st.current_replicas = Some(current);
                    st.current_metrics = None;
                    st.conditions = Some(conds);
                    hpa.status = Some(st);
                    self.recorder
                        .warning(&on, "FailedComputeMetricsReplicas", &e)
                        .await;
                    return Err(format!(
                        "failed to compute desired number of replicas based on listed metrics for {reference}: {e}"
                    ));
                }
            };
            statuses = computed.statuses;
            let reason = if computed.replicas > current {
                format!("{} above target", computed.metric)
            } else if computed.replicas < current {
                "All metrics below target".into()
            } else {
                String::new()
            };
            let outcome = {
                let now = Instant::now();
                let mut histories = self.lock_histories();
                let h = histories.entry(key.to_string()).or_default();
                match &spec.behavior {
                    None => h.normalize(
                        current,
                        computed.replicas,
                        min,
                        max,
                        self.ctx.options.hpa_downscale_stabilization,
                        now,
                    ),
                    Some(b) => h.normalize_with_behavior(
                        &Behavior::resolve(b, self.ctx.options.hpa_downscale_stabilization),
                        current,
                        computed.replicas,
                        min,
                        max,
                        now,
                    ),
                }
            };
            status::set_condition(
                &mut conds,
                &Condition::new(
                    ABLE_TO_SCALE,
                    true,
                    outcome.able_reason,
                    outcome.able_message,
                ),
            );
            status::set_condition(
                &mut conds,
                &Condition::new(
                    SCALING_LIMITED,
                    outcome.limited,
                    outcome.limited_reason,
                    outcome.limited_message,
                ),
            );
            (outcome.replicas, outcome.replicas != current, reason)
        };

        if rescale {
            if let Some(s) = scale.spec.as_mut() {
                s.replicas = Some(desired);
            }
            if let Err(e) = scale_api
                .replace_scale(&target.name, &PostParams::default(), &scale)
                .await
            {
                let e = message(&e);
                self.recorder
                    .warning(
                        &on,
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {reason}; error: {e}"),
                    )
                    .await;
                status::set_condition(
                    &mut conds,
                    &Condition::new(
                        ABLE_TO_SCALE,
                        false,
                        "FailedUpdateScale",
                        format!("the HPA controller was unable to update the target scale: {e}"),
                    ),
                );
                st.current_replicas = Some(current);
                st.current_metrics = (!statuses.is_empty()).then_some(statuses);
                st.conditions = Some(conds);
                hpa.status = Some(st);
                return Err(format!("failed to rescale {reference}: {e}"));
            }
            status::set_condition(
                &mut conds,
                &Condition::new(
                    ABLE_TO_SCALE,
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ),
            );
            self.recorder
                .normal(
                    &on,
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {reason}"),
                )
                .await;
            if let Some(b) = &spec.behavior {
                let b = Behavior::resolve(b, self.ctx.options.hpa_downscale_stabilization);
                self.lock_histories()
                    .entry(key.to_string())
                    .or_default()
                    .record_scale(&b, current, desired, Instant::now());
            }
            tracing::info!(hpa = key, from = current, to = desired, %reason, "rescaled");
            st.last_scale_time = Some(Time(jiff::Timestamp::now()));
        }
        st.current_replicas = Some(current);
        st.desired_replicas = if rescale { desired } else { current };
        st.current_metrics = (!statuses.is_empty()).then_some(statuses);
        st.conditions = Some(conds);
        hpa.status = Some(st);
        result
    }

    /// The largest count the valid metrics ask for, with their statuses. `(None, err)`
    /// when no count can be trusted: every metric failed, or some failed and the rest
    /// would scale down (a failing metric might have held the scale).
    async fn compute(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
        current: i32,
        selector: &str,
        conds: &mut Vec<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerCondition>,
        on: &ObjectReference,
    ) -> (Option<Computed>, Option<String>) {
        if selector.is_empty() {
            let msg = "selector is required";
            self.recorder.warning(on, "SelectorRequired", msg).await;
            status::set_condition(
                conds,
                &Condition::new(
                    SCALING_ACTIVE,
                    false,
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector",
                ),
            );
            return (None, Some(msg.into()));
        }
        let parsed = match LabelSelector::parse(selector) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!(
                    "couldn't convert selector into a corresponding internal selector object: {e}"
                );
                self.recorder.warning(on, "InvalidSelector", &msg).await;
                status::set_condition(
                    conds,
                    &Condition::new(SCALING_ACTIVE, false, "InvalidSelector", msg.clone()),
                );
                return (None, Some(msg));
            }
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| {
                parsed.matches(&serde_json::json!({"metadata": {"labels": p.metadata.labels}}))
            })
            .collect();
        let pods: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
        let metrics = hpa
            .spec
            .as_ref()
            .and_then(|s| s.metrics.clone())
            .unwrap_or_default();
        let mut statuses = vec![MetricStatus::default(); metrics.len()];
        let (mut replicas, mut metric) = (0, String::new());
        let mut invalid = 0;
        let mut first: Option<(Condition, String)> = None;
        for (i, spec) in metrics.iter().enumerate() {
            match self
                .one_metric(hpa, ns, current, selector, &pods, spec)
                .await
            {
                Ok((n, name, s)) => {
                    statuses[i] = s;
                    if replicas == 0 || n > replicas {
                        replicas = n;
                        metric = name;
                    }
                }
                Err((reason, e)) => {
                    let cond = Condition::new(
                        SCALING_ACTIVE,
                        false,
                        reason,
                        format!("the HPA was unable to compute the replica count: {e}"),
                    );
                    let inner = e.split_once(": ").map_or(e.as_str(), |(_, r)| r);
                    self.recorder.warning(on, reason, inner).await;
                    invalid += 1;
                    first.get_or_insert((cond, e));
                }
            }
        }
        let err = first.as_ref().map(|(_, e)| {
            format!(
                "invalid metrics ({invalid} invalid out of {}), first error is: {e}",
                metrics.len()
            )
        });
        if let Some((cond, _)) = &first
            && (invalid >= metrics.len() || replicas < current)
        {
            status::set_condition(conds, cond);
            return (None, err);
        }
        status::set_condition(
            conds,
            &Condition::new(
                SCALING_ACTIVE,
                true,
                "ValidMetricFound",
                format!("the HPA was able to successfully calculate a replica count from {metric}"),
            ),
        );
        (
            Some(Computed {
                replicas,
                metric,
                statuses,
            }),
            err,
        )
    }

    fn tolerances(&self, hpa: &HorizontalPodAutoscaler) -> Tolerances {
        let default = self.ctx.options.hpa_tolerance;
        let side = |r: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>| {
            r.and_then(|r| r.tolerance.as_ref())
                .and_then(|q| Quantity::parse(&q.0).ok())
                .map_or(default, |q| q.milli() as f64 / 1000.0)
        };
        let b = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
        Tolerances {
            up: side(b.and_then(|b| b.scale_up.as_ref())),
            down: side(b.and_then(|b| b.scale_down.as_ref())),
        }
    }

    /// One metric's proposal: (replicas, the name the rescale reason uses, its status),
    /// or (the condition reason, the error).
    async fn one_metric(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
        current: i32,
        selector: &str,
        pods: &[&Pod],
        spec: &MetricSpec,
    ) -> Result<(i32, String, MetricStatus), (&'static str, String)> {
        let (resource, container, target, reason) = match spec.type_.as_str() {
            "Resource" => match &spec.resource {
                Some(r) => (&r.name, None, &r.target, "FailedGetResourceMetric"),
                None => return Err(("FailedGetResourceMetric", "failed to get resource metric value: spec.resource is not set".into())),
            },
            "ContainerResource" => match &spec.container_resource {
                Some(r) => (
                    &r.name,
                    Some(r.container.as_str()),
                    &r.target,
                    "FailedGetContainerResourceMetric",
                ),
                None => return Err(("FailedGetContainerResourceMetric", "failed to get container resource metric value: spec.containerResource is not set".into())),
            },
            "Pods" => return Err(("FailedGetPodsMetric", "failed to get pods metric value: the custom metrics API (custom.metrics.k8s.io) is not served".into())),
            "Object" => return Err(("FailedGetObjectMetric", "failed to get object metric value: the custom metrics API (custom.metrics.k8s.io) is not served".into())),
            "External" => return Err(("FailedGetExternalMetric", "failed to get external metric value: the external metrics API (external.metrics.k8s.io) is not served".into())),
            other => return Err(("InvalidMetricSourceType", format!("unknown metric source type {other:?}"))),
        };
        let outer = |e: String| {
            (
                reason,
                match container {
                    None => format!("failed to get {resource} resource metric value: {e}"),
                    Some(_) => {
                        format!("failed to get {resource} container resource metric value: {e}")
                    }
                },
            )
        };
        let calc = Calculator {
            tolerances: self.tolerances(hpa),
            cpu_initialization_period: self.ctx.options.hpa_cpu_initialization_period,
            initial_readiness_delay: self.ctx.options.hpa_initial_readiness_delay,
            now: jiff::Timestamp::now(),
            container: container.map(str::to_string),
        };
        if let Some(avg) = &target.average_value {
            let want = Quantity::parse(&avg.0)
                .map(|q| i64::try_from(q.milli()).unwrap_or(i64::MAX))
                .map_err(|e| outer(format!("invalid averageValue {:?}: {e}", avg.0)))?;
            let metrics =
                hpa_metrics::resource_metrics(&self.ctx.client, ns, selector, resource, container)
                    .await
                    .map_err(|e| outer(format!("failed to get {resource} usage: {e}")))?;
            let (n, usage) = calc
                .raw_resource_replicas(current, want, resource, pods, metrics)
                .map_err(|e| outer(format!("failed to get {resource} usage: {e}")))?;
            let name = match container {
                None => format!("{resource} resource"),
                Some(_) => format!("{resource} container resource"),
            };
            return Ok((
                n,
                name,
                status::resource_status(resource, container, None, usage),
            ));
        }
        let Some(target_utilization) = target.average_utilization else {
            return Err(outer(
                "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into(),
            ));
        };
        let metrics =
            hpa_metrics::resource_metrics(&self.ctx.client, ns, selector, resource, container)
                .await
                .map_err(|e| outer(format!("failed to get {resource} utilization: {e}")))?;
        let p = calc
            .resource_replicas(current, target_utilization, resource, pods, metrics)
            .map_err(|e| outer(format!("failed to get {resource} utilization: {e}")))?;
        let name = match container {
            None => format!("{resource} resource utilization (percentage of request)"),
            Some(_) => format!("{resource} container resource utilization (percentage of request)"),
        };
        Ok((
            p.replicas,
            name,
            status::resource_status(resource, container, Some(p.utilization), p.raw_average),
        ))
    }
}
