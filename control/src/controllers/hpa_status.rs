//! The HPA's status as the podautoscaler writes it: conditions (AbleToScale,
//! ScalingActive, ScalingLimited; a condition's `lastTransitionTime` moves only when its
//! status does) and the MetricStatus entries `kubectl get hpa` prints as TARGETS.

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscalerCondition, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::admission::quantity::Quantity;

pub const ABLE_TO_SCALE: &str = "AbleToScale";
pub const SCALING_ACTIVE: &str = "ScalingActive";
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// A condition to set: (type, status True/False, reason, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Sets `c` in `conds` (appended when new), keeping the transition time unless the
/// status changes.
pub fn set_condition(conds: &mut Vec<HorizontalPodAutoscalerCondition>, c: &Condition) {
    let status = if c.status { "True" } else { "False" }.to_string();
    let now = Some(Time(jiff::Timestamp::now()));
    match conds.iter_mut().find(|e| e.type_ == c.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status;
            existing.reason = Some(c.reason.clone());
            existing.message = Some(c.message.clone());
        }
        None => conds.push(HorizontalPodAutoscalerCondition {
            type_: c.type_.to_string(),
            status,
            reason: Some(c.reason.clone()),
            message: Some(c.message.clone()),
            last_transition_time: now,
        }),
    }
}

/// A milli-value as a canonical decimal quantity (`250m`, `104857600`, `1k`).
pub fn milli_quantity(milli: i64) -> K8sQuantity {
    let q = Quantity::parse(&format!("{milli}m")).unwrap_or_else(|_| Quantity::zero());
    K8sQuantity(q.to_string())
}

/// A Resource (or ContainerResource) metric's status.
pub fn resource_status(
    name: &str,
    container: Option<&str>,
    utilization: Option<i32>,
    average_milli: i64,
) -> MetricStatus {
    let current = MetricValueStatus {
        average_utilization: utilization,
        average_value: Some(milli_quantity(average_milli)),
        value: None,
    };
    match container {
        None => MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: name.to_string(),
                current,
            }),
            ..MetricStatus::default()
        },
        Some(c) => MetricStatus {
            type_: "ContainerResource".into(),
            container_resource: Some(
                k8s_openapi::api::autoscaling::v2::ContainerResourceMetricStatus {
                    name: name.to_string(),
                    container: c.to_string(),
                    current,
                },
            ),
            ..MetricStatus::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_with_the_status_only() {
        let mut conds = Vec::new();
        set_condition(&mut conds, &Condition::new(ABLE_TO_SCALE, true, "A", "a"));
        let t0 = Time("2020-01-01T00:00:00Z".parse().unwrap());
        conds[0].last_transition_time = Some(t0.clone());
        set_condition(&mut conds, &Condition::new(ABLE_TO_SCALE, true, "B", "b"));
        assert_eq!(conds[0].last_transition_time, Some(t0.clone()));
        assert_eq!(conds[0].reason.as_deref(), Some("B"));
        set_condition(&mut conds, &Condition::new(ABLE_TO_SCALE, false, "C", "c"));
        assert_ne!(conds[0].last_transition_time, Some(t0));
        set_condition(&mut conds, &Condition::new(SCALING_ACTIVE, true, "D", "d"));
        assert_eq!(conds.len(), 2);
    }

    #[test]
    fn quantities_are_canonical() {
        assert_eq!(milli_quantity(250).0, "250m");
        assert_eq!(milli_quantity(1000).0, "1");
        assert_eq!(milli_quantity(104_857_600_000).0, "104857600");
        assert_eq!(milli_quantity(0).0, "0");
    }
}
