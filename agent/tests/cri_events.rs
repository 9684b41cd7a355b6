//! GetContainerEvents through a real gRPC client (as root, real containers): created,
//! started, stopped (by itself and by StopContainer, once each) and deleted, for
//! containers and for the pod sandbox, each carrying the pod's status and its
//! containers' statuses as containerd sends them.

mod streaming_support;

use std::time::Duration;

use k8s_cri::v1::*;
use streaming_support::PodEnv;
use tonic::Streaming;

/// The next event about `id` (others are skipped); bounded so a lost event fails.
async fn next_for(
    events: &mut Streaming<ContainerEventResponse>,
    id: &str,
) -> ContainerEventResponse {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(90), events.message())
            .await
            .unwrap_or_else(|_| panic!("no event about {id} within 90 s"))
            .expect("event stream failed")
            .expect("event stream ended");
        if ev.container_id == id {
            return ev;
        }
    }
}

fn kind(ev: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(ev.container_event_type).expect("known event type")
}

fn status_of<'a>(ev: &'a ContainerEventResponse, id: &str) -> Option<&'a ContainerStatus> {
    ev.containers_statuses.iter().find(|s| s.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_and_sandbox_events_carry_statuses() {
    let mut env = PodEnv::new("cri-events", "default", "events").await;
    let mut events = env
        .rt
        .get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    // The subscription is live once the server answered; a container started now is seen.

    // A container that exits by itself: created, started, then stopped with its code.
    let quick = env.run("quick", "sleep 1; exit 3", false, 0).await;
    let ev = next_for(&mut events, &quick).await;
    assert_eq!(kind(&ev), ContainerEventType::ContainerCreatedEvent);
    assert_eq!(
        ev.pod_sandbox_status.as_ref().map(|s| s.id.as_str()),
        Some(env.sandbox.as_str()),
        "event without its pod's status: {ev:?}"
    );
    assert!(
        status_of(&ev, &quick).is_some(),
        "created event lacks the container's status: {ev:?}"
    );
    assert!(ev.created_at > 0);
    let ev = next_for(&mut events, &quick).await;
    assert_eq!(kind(&ev), ContainerEventType::ContainerStartedEvent);
    let ev = next_for(&mut events, &quick).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerStoppedEvent,
        "{ev:?}"
    );
    let st = status_of(&ev, &quick).expect("stopped event lacks the container's status");
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.exit_code, 3, "{st:?}");

    // StopContainer: one STOPPED (not one from the call and one from the exit), then
    // DELETED, whose statuses no longer list the container.
    let long = env.run("long", "exec sleep 1000", false, 0).await;
    assert_eq!(
        kind(&next_for(&mut events, &long).await),
        ContainerEventType::ContainerCreatedEvent
    );
    assert_eq!(
        kind(&next_for(&mut events, &long).await),
        ContainerEventType::ContainerStartedEvent
    );
    env.rt
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let ev = next_for(&mut events, &long).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerStoppedEvent,
        "{ev:?}"
    );
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: long.clone(),
        })
        .await
        .unwrap();
    let ev = next_for(&mut events, &long).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerDeletedEvent,
        "{ev:?}"
    );
    assert!(
        status_of(&ev, &long).is_none(),
        "deleted container still listed: {ev:?}"
    );
    assert!(
        status_of(&ev, &quick).is_some(),
        "pod's other container missing: {ev:?}"
    );

    // The pod itself: stopped (its status NOTREADY), then deleted.
    let sandbox = env.sandbox.clone();
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap();
    let ev = next_for(&mut events, &sandbox).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerStoppedEvent,
        "{ev:?}"
    );
    assert_eq!(
        ev.pod_sandbox_status.as_ref().map(|s| s.state),
        Some(PodSandboxState::SandboxNotready as i32),
        "{ev:?}"
    );
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .unwrap();
    let ev = next_for(&mut events, &sandbox).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerDeletedEvent,
        "{ev:?}"
    );

    // A new pod: created and started events with its ready status.
    let mut pod = env.pod.clone();
    if let Some(m) = pod.metadata.as_mut() {
        m.name = "events-2".into();
        m.uid = format!("{}-2", m.uid);
    }
    let second = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // From here the env's guard removes the second pod if an assertion fails.
    env.sandbox = second.clone();
    let ev = next_for(&mut events, &second).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerCreatedEvent,
        "{ev:?}"
    );
    let ev = next_for(&mut events, &second).await;
    assert_eq!(
        kind(&ev),
        ContainerEventType::ContainerStartedEvent,
        "{ev:?}"
    );
    assert_eq!(
        ev.pod_sandbox_status.as_ref().map(|s| s.state),
        Some(PodSandboxState::SandboxReady as i32),
        "{ev:?}"
    );
    env.teardown().await;
}
