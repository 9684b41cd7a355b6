//! What stands between an HPA's raw recommendation and the scale it writes, as
//! kube-controller-manager's podautoscaler does it: **stabilization** (over the window,
//! a scale-down goes only as low as the highest recent recommendation, a scale-up only as
//! high as the lowest), **rate limits** (`behavior` policies: at most so many pods or
//! percent per period, `selectPolicy` Max/Min/Disabled, counted from the scale events
//! this controller made in each period) and the min/max bounds. Without `behavior` the
//! legacy rules apply: the downscale stabilization window, and a scale-up of at most
//! max(2 × current, 4). The outcome names the reasons the AbleToScale and ScalingLimited
//! conditions show.
//!
//! History is per HPA and in memory, as upstream's: a new leader starts without it.

use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: Duration,
}

/// One direction's rules with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

/// Both directions, resolved from an HPA's `spec.behavior`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn rules(r: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(r) = r else { return default };
    let select = match r.select_policy.as_deref() {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        Some(_) => Select::Max,
        None => default.select,
    };
    let policies = match &r.policies {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|p| Policy {
                kind: if p.type_ == "Pods" {
                    PolicyKind::Pods
                } else {
                    PolicyKind::Percent
                },
                value: p.value,
                period: secs(p.period_seconds),
            })
            .collect(),
        _ => default.policies,
    };
    Rules {
        window: r.stabilization_window_seconds.map_or(default.window, secs),
        select,
        policies,
    }
}

impl Behavior {
    /// Kubernetes' defaults for what `behavior` leaves out: scale-up without a window,
    /// the larger of +100% and +4 pods per 15 s; scale-down over the downscale window
    /// (`downscale_window`, 300 s by default), up to −100% per 15 s.
    pub fn resolve(b: &HorizontalPodAutoscalerBehavior, downscale_window: Duration) -> Behavior {
        let period = Duration::from_secs(15);
        let up = Rules {
            window: Duration::ZERO,
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period,
                },
            ],
        };
        let down = Rules {
            window: downscale_window,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period,
            }],
        };
        Behavior {
            up: rules(b.scale_up.as_ref(), up),
            down: rules(b.scale_down.as_ref(), down),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    change: i32,
    at: Instant,
}

/// One HPA's memory: recent raw recommendations and the scale changes it made.
#[derive(Debug, Default)]
pub struct History {
    recommendations: Vec<(i32, Instant)>,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
}

/// The normalized count and the conditions it explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replicas: i32,
    /// AbleToScale (True): `ReadyForNewScale`, `ScaleUpStabilized` or `ScaleDownStabilized`.
    pub able_reason: &'static str,
    pub able_message: &'static str,
    /// ScalingLimited: True when the bound or rate changed the stabilized count.
    pub limited: bool,
    pub limited_reason: &'static str,
    pub limited_message: &'static str,
}

const READY: (&str, &str) = ("ReadyForNewScale", "recommended size matches current size");
const DOWN_STABILIZED: (&str, &str) = (
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const UP_STABILIZED: (&str, &str) = (
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const WITHIN: (&str, &str) = (
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const UP_LIMIT: (&str, &str) = (
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const DOWN_LIMIT: (&str, &str) = (
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);
const TOO_MANY: (&str, &str) = (
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const TOO_FEW: (&str, &str) = (
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);

fn outcome(
    replicas: i32,
    stabilized: i32,
    able: (&'static str, &'static str),
    limit: (&'static str, &'static str),
) -> Outcome {
    Outcome {
        replicas,
        able_reason: able.0,
        able_message: able.1,
        limited: replicas != stabilized,
        limited_reason: limit.0,
        limited_message: limit.1,
    }
}

impl History {
    /// Without `behavior`: the downscale window, then min/max and the legacy scale-up cap.
    pub fn normalize(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        downscale_window: Duration,
        now: Instant,
    ) -> Outcome {
        let mut stabilized = desired;
        let mut old = None;
        for (i, (rec, at)) in self.recommendations.iter().enumerate() {
            if now.saturating_duration_since(*at) > downscale_window {
                old = Some(i);
            } else {
                stabilized = stabilized.max(*rec);
            }
        }
        self.record(old, desired, now);
        let able = if stabilized == desired {
            READY
        } else {
            DOWN_STABILIZED
        };
        let scale_up_limit = (2 * current).max(4);
        let (upper, upper_reason) = if max > scale_up_limit {
            (scale_up_limit, UP_LIMIT)
        } else {
            (max, TOO_MANY)
        };
        let (replicas, limit) = if stabilized < min {
            (min, TOO_FEW)
        } else if stabilized > upper {
            (upper, upper_reason)
        } else {
            (stabilized, WITHIN)
        };
        outcome(replicas, stabilized, able, limit)
    }

    /// With `behavior`: both windows, then the policies' rate and min/max.
    pub fn normalize_with_behavior(
        &mut self,
        b: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Instant,
    ) -> Outcome {
        let (mut up_rec, mut down_rec) = (desired, desired);
        let mut old = None;
        for (i, (rec, at)) in self.recommendations.iter().enumerate() {
            let age = now.saturating_duration_since(*at);
            if age < b.up.window {
                up_rec = up_rec.min(*rec);
            }
            if age < b.down.window {
                down_rec = down_rec.max(*rec);
            }
            if age > b.up.window && age > b.down.window {
                old = Some(i);
            }
        }
        let stabilized = current.max(up_rec).min(down_rec);
        self.record(old, desired, now);
        let able = if stabilized == desired {
            READY
        } else if desired >= current {
            UP_STABILIZED
        } else {
            DOWN_STABILIZED
        };
        let (replicas, limit) = if stabilized > current {
            let rate = self.scale_up_limit(current, &b.up, now).max(current);
            let (upper, reason) = if max > rate {
                (rate, UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            if stabilized > upper {
                (upper, reason)
            } else {
                (stabilized, WITHIN)
            }
        } else if stabilized < current {
            let rate = self.scale_down_limit(current, &b.down, now).min(current);
            let (lower, reason) = if min < rate {
                (rate, DOWN_LIMIT)
            } else {
                (min, TOO_FEW)
            };
            if stabilized < lower {
                (lower, reason)
            } else {
                (stabilized, WITHIN)
            }
        } else {
            (stabilized, WITHIN)
        };
        outcome(replicas, stabilized, able, limit)
    }

    fn record(&mut self, old: Option<usize>, desired: i32, now: Instant) {
        match old {
            Some(i) => self.recommendations[i] = (desired, now),
            None => self.recommendations.push((desired, now)),
        }
    }

    fn changed_within(events: &[ScaleEvent], period: Duration, now: Instant) -> i32 {
        events
            .iter()
            .filter(|e| now.saturating_duration_since(e.at) < period)
            .map(|e| e.change)
            .sum()
    }

    /// The most the policies allow at `now`: each policy's allowance counted from the
    /// size at the start of its period (now minus what was added, plus what was removed).
    fn scale_up_limit(&self, current: i32, r: &Rules, now: Instant) -> i32 {
        if r.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for p in &r.policies {
            let start = current - Self::changed_within(&self.up_events, p.period, now)
                + Self::changed_within(&self.down_events, p.period, now);
            let proposed = match p.kind {
                PolicyKind::Pods => start.saturating_add(p.value),
                PolicyKind::Percent => {
                    (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
                }
            };
            result = Some(match (result, r.select) {
                (None, _) => proposed,
                (Some(x), Select::Min) => x.min(proposed),
                (Some(x), _) => x.max(proposed),
            });
        }
        result.unwrap_or(current)
    }

    fn scale_down_limit(&self, current: i32, r: &Rules, now: Instant) -> i32 {
        if r.select == Select::Disabled {
            return current;
        }
        let mut result: Option<i32> = None;
        for p in &r.policies {
            let start = current - Self::changed_within(&self.up_events, p.period, now)
                + Self::changed_within(&self.down_events, p.period, now);
            let proposed = match p.kind {
                PolicyKind::Pods => start.saturating_sub(p.value),
                PolicyKind::Percent => {
                    (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32
                }
            };
            result = Some(match (result, r.select) {
                (None, _) => proposed,
                (Some(x), Select::Min) => x.max(proposed),
                (Some(x), _) => x.min(proposed),
            });
        }
        result.unwrap_or(current)
    }

    /// Remembers a scale change this controller made (only HPAs with `behavior` keep
    /// them; events older than the longest policy period are overwritten).
    pub fn record_scale(&mut self, b: &Behavior, from: i32, to: i32, now: Instant) {
        let (events, rules, change) = if to > from {
            (&mut self.up_events, &b.up, to - from)
        } else if to < from {
            (&mut self.down_events, &b.down, from - to)
        } else {
            return;
        };
        let longest = rules
            .policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default();
        let event = ScaleEvent { change, at: now };
        match events
            .iter_mut()
            .find(|e| now.saturating_duration_since(e.at) > longest)
        {
            Some(slot) => *slot = event,
            None => events.push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn behavior(v: serde_json::Value) -> Behavior {
        Behavior::resolve(
            &serde_json::from_value(v).unwrap(),
            Duration::from_secs(300),
        )
    }

    #[test]
    fn defaults_are_kubernetes() {
        let b = behavior(json!({}));
        assert_eq!(b.up.window, Duration::ZERO);
        assert_eq!(b.up.policies.len(), 2);
        assert_eq!(b.down.window, Duration::from_secs(300));
        assert_eq!(b.down.select, Select::Max);
        let b = behavior(
            json!({"scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Disabled"}}),
        );
        assert_eq!(b.down.window, Duration::ZERO);
        assert_eq!(b.down.select, Select::Disabled);
        assert_eq!(b.down.policies.len(), 1, "policies default when left out");
    }

    #[test]
    fn legacy_downscale_window_holds_the_highest_recommendation() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let mut h = History::default();
        assert_eq!(h.normalize(2, 5, 1, 10, w, t0).replicas, 4, "2x cap");
        let o = h.normalize(4, 5, 1, 10, w, t0 + Duration::from_secs(15));
        assert_eq!((o.replicas, o.limited), (5, false));
        // Load drops: the recommendation of 5 from 15 s ago holds the scale.
        let o = h.normalize(5, 1, 1, 10, w, t0 + Duration::from_secs(30));
        assert_eq!(o.replicas, 5);
        assert_eq!(o.able_reason, "ScaleDownStabilized");
        // After the window the old samples no longer count.
        let o = h.normalize(5, 1, 1, 10, w, t0 + Duration::from_secs(400));
        assert_eq!(o.replicas, 1);
        assert_eq!(o.able_reason, "ReadyForNewScale");
        assert_eq!(o.limited_reason, "DesiredWithinRange");
    }

    #[test]
    fn legacy_bounds_name_the_limit() {
        let now = Instant::now();
        let w = Duration::ZERO;
        let o = History::default().normalize(3, 9, 1, 5, w, now);
        assert_eq!(
            (o.replicas, o.limited, o.limited_reason),
            (5, true, "TooManyReplicas")
        );
        let o = History::default().normalize(3, 0, 2, 5, w, now);
        assert_eq!(
            (o.replicas, o.limited, o.limited_reason),
            (2, true, "TooFewReplicas")
        );
        let o = History::default().normalize(3, 20, 1, 50, w, now);
        assert_eq!((o.replicas, o.limited_reason), (6, "ScaleUpLimit"));
    }

    #[test]
    fn default_scale_up_rate_is_max_of_4_pods_and_100_percent() {
        let b = behavior(json!({}));
        let t0 = Instant::now();
        let mut h = History::default();
        // From 1: max(1+4, 2) = 5.
        let o = h.normalize_with_behavior(&b, 1, 20, 1, 100, t0);
        assert_eq!((o.replicas, o.limited_reason), (5, "ScaleUpLimit"));
        h.record_scale(&b, 1, 5, t0);
        // 5 s later, same period: the period started at 1, so still at most 5.
        let o = h.normalize_with_behavior(&b, 5, 20, 1, 100, t0 + Duration::from_secs(5));
        assert_eq!(o.replicas, 5);
        // After the period: from 5, max(9, 10) = 10.
        let o = h.normalize_with_behavior(&b, 5, 20, 1, 100, t0 + Duration::from_secs(16));
        assert_eq!(o.replicas, 10);
        // maxReplicas below the rate: TooManyReplicas.
        let o = h.normalize_with_behavior(&b, 5, 20, 1, 7, t0 + Duration::from_secs(40));
        assert_eq!((o.replicas, o.limited_reason), (7, "TooManyReplicas"));
    }

    #[test]
    fn scale_down_policies_and_windows() {
        let b = behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 60,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30},
                         {"type": "Percent", "value": 50, "periodSeconds": 30}],
            "selectPolicy": "Min"}}));
        let t0 = Instant::now();
        let mut h = History::default();
        let o = h.normalize_with_behavior(&b, 10, 10, 1, 20, t0);
        assert_eq!(o.replicas, 10);
        // Inside the window the earlier 10 holds.
        let o = h.normalize_with_behavior(&b, 10, 2, 1, 20, t0 + Duration::from_secs(30));
        assert_eq!((o.replicas, o.able_reason), (10, "ScaleDownStabilized"));
        // After it: Min of (10-1, 10*0.5) picks the smaller change: 9.
        let o = h.normalize_with_behavior(&b, 10, 2, 1, 20, t0 + Duration::from_secs(91));
        assert_eq!((o.replicas, o.limited_reason), (9, "ScaleDownLimit"));
        h.record_scale(&b, 10, 9, t0 + Duration::from_secs(91));
        // Within the same period the period's start (10) counts: 10-1 = 9, no further.
        let o = h.normalize_with_behavior(&b, 9, 2, 1, 20, t0 + Duration::from_secs(100));
        assert_eq!(o.replicas, 9);
    }

    #[test]
    fn windows_of_zero_follow_the_recommendation_and_disabled_holds() {
        let b = behavior(json!({"scaleDown": {"stabilizationWindowSeconds": 0}}));
        let t0 = Instant::now();
        let mut h = History::default();
        h.normalize_with_behavior(&b, 3, 3, 1, 3, t0);
        let o = h.normalize_with_behavior(&b, 3, 1, 1, 3, t0 + Duration::from_secs(1));
        assert_eq!(o.replicas, 1);
        let b = behavior(json!({"scaleUp": {"selectPolicy": "Disabled"}}));
        let o = History::default().normalize_with_behavior(&b, 2, 5, 1, 10, t0);
        assert_eq!((o.replicas, o.limited), (2, true));
        // A scale-up window holds the lowest recent recommendation.
        let b = behavior(json!({"scaleUp": {"stabilizationWindowSeconds": 60}}));
        let mut h = History::default();
        h.normalize_with_behavior(&b, 2, 2, 1, 10, t0);
        let o = h.normalize_with_behavior(&b, 2, 6, 1, 10, t0 + Duration::from_secs(10));
        assert_eq!((o.replicas, o.able_reason), (2, "ScaleUpStabilized"));
    }
}
