//! The text of an unschedulable pod's `PodScheduled=False` condition and
//! `FailedScheduling` Event, word for word as kube-scheduler writes it, e.g.
//! `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}.
//! preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod,
//! 2 Preemption is not helpful for scheduling.`

use std::collections::BTreeMap;

use super::filter::Reason;

/// The message for a pod no node fits. `failed` holds every node's reasons.
pub fn unschedulable(total: usize, failed: &[Vec<Reason>], preemption_never: bool) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut victims, mut hopeless) = (0, 0);
    for node in failed {
        for r in node {
            *reasons.entry(&r.text).or_insert(0) += 1;
        }
        if node.iter().all(|r| r.resolvable) {
            victims += 1;
        } else {
            hopeless += 1;
        }
    }
    let mut msg = format!("0/{total} nodes are available: {}.", histogram(reasons));
    if preemption_never {
        msg.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
        return msg;
    }
    // No victims are ever chosen (preemption is not implemented), which is also what
    // kube-scheduler says when no pod of lower priority exists.
    let mut pre = BTreeMap::new();
    if victims > 0 {
        pre.insert("No preemption victims found for incoming pod", victims);
    }
    if hopeless > 0 {
        pre.insert("Preemption is not helpful for scheduling", hopeless);
    }
    msg.push_str(&format!(
        " preemption: 0/{total} nodes are available: {}.",
        histogram(pre)
    ));
    msg
}

/// `"<count> <reason>"` entries sorted as strings, as kube's `sortReasonsHistogram`.
fn histogram(counts: BTreeMap<&str, usize>) -> String {
    let mut items: Vec<String> = counts
        .into_iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    items.sort();
    items.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &'static str, resolvable: bool) -> Reason {
        Reason {
            text: text.into(),
            resolvable,
        }
    }

    #[test]
    fn reads_like_kube_scheduler() {
        let taint = r("node(s) had untolerated taint {k: v}", false);
        let msg = unschedulable(
            3,
            &[
                vec![r("Insufficient cpu", true)],
                vec![taint.clone()],
                vec![taint],
            ],
            false,
        );
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling."
        );
        let msg = unschedulable(
            1,
            &[vec![
                r("Insufficient cpu", true),
                r("Insufficient memory", true),
            ]],
            true,
        );
        assert_eq!(
            msg,
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. \
             preemption: not eligible due to preemptionPolicy=Never."
        );
        assert_eq!(
            unschedulable(0, &[], false),
            "no nodes available to schedule pods"
        );
    }
}
