//! Image pulls per imagePullPolicy (Kubernetes' defaults), with credentials from the
//! pod's imagePullSecrets (`kubernetes.io/dockerconfigjson` and `dockercfg`).

use std::collections::HashSet;

use k8s_cri::v1::{AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest};
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use serde_json::Value;

use super::cri_client::Cri;
use super::events::{NORMAL, Recorder, WARNING};

/// `latest` (or no tag and no digest) → Always, else IfNotPresent.
pub fn policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let img = c.image.as_deref().unwrap_or_default();
    if img.contains('@') {
        return "IfNotPresent".into();
    }
    let last = img.rsplit('/').next().unwrap_or(img);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always".into(),
        Some(_) => "IfNotPresent".into(),
    }
}

/// The registry host an image reference names (Docker Hub when none is given).
pub fn registry(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.into(),
        _ => "docker.io".into(),
    }
}

fn matches(key: &str, host: &str) -> bool {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    k == host || (host == "docker.io" && (k == "index.docker.io" || k == "registry-1.docker.io"))
}

async fn auth_for(client: &kube::Client, pod: &Pod, image: &str) -> Option<AuthConfig> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host = registry(image);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for r in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
        let Ok(Some(s)) = api.get_opt(&r.name).await else {
            continue;
        };
        let data = s.data.unwrap_or_default();
        let (doc, nested) = if let Some(d) = data.get(".dockerconfigjson") {
            (d, true)
        } else if let Some(d) = data.get(".dockercfg") {
            (d, false)
        } else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&doc.0) else {
            continue;
        };
        let auths = if nested {
            v.get("auths").cloned().unwrap_or(Value::Null)
        } else {
            v
        };
        let Some(m) = auths.as_object() else { continue };
        for (k, e) in m {
            if matches(k, &host) {
                let s = |f: &str| {
                    e.get(f)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Some(AuthConfig {
                    username: s("username"),
                    password: s("password"),
                    auth: s("auth"),
                    server_address: host.clone(),
                    ..Default::default()
                });
            }
        }
    }
    None
}

/// The images of `pod`'s containers (init containers too) that the runtime has, asked
/// for all at once (one ImageStatus per distinct image). Images whose policy pulls
/// always are not asked for.
pub async fn present(cri: &Cri, pod: &Pod) -> HashSet<String> {
    let mut names: Vec<String> = Vec::new();
    let spec = pod.spec.as_ref();
    let all = spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    });
    for c in all {
        let Some(image) = c.image.as_deref().filter(|i| !i.is_empty()) else {
            continue;
        };
        if policy(c) != "Always" && !names.iter().any(|n| n == image) {
            names.push(image.to_string());
        }
    }
    let asks = names.into_iter().map(|image| {
        let mut img = cri.img.clone();
        async move {
            let found = img
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .is_ok_and(|r| r.into_inner().image.is_some());
            found.then_some(image)
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Makes the image of `c` present per its pull policy, recording kubelet's Events
/// (`Pulling`, `Pulled`, `Failed`). `known_present`: the runtime was just seen to have
/// it (no ImageStatus then). Err: (reason, message) for the container's waiting state.
pub async fn ensure(
    cri: &Cri,
    client: &kube::Client,
    events: &Recorder,
    pod: &Pod,
    c: &Container,
    known_present: bool,
) -> Result<(), (String, String)> {
    let ev = |type_, reason: &str, msg: String| events.pod(pod, Some(&c.name), type_, reason, msg);
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(("InvalidImageName".into(), "container has no image".into()));
    }
    let spec = ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let policy = policy(c);
    let mut img = cri.img.clone();
    // `Always` pulls whatever is present: no need to ask.
    let present = known_present
        || (policy != "Always"
            && img
                .image_status(ImageStatusRequest {
                    image: Some(spec.clone()),
                    verbose: false,
                })
                .await
                .is_ok_and(|r| r.into_inner().image.is_some()));
    match policy.as_str() {
        "Never" if !present => {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            ev(WARNING, "ErrImageNeverPull", msg.clone());
            return Err(("ErrImageNeverPull".into(), msg));
        }
        "Never" | "IfNotPresent" if present => {
            ev(
                NORMAL,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
            return Ok(());
        }
        _ => {}
    }
    ev(NORMAL, "Pulling", format!("Pulling image \"{image}\""));
    let t = std::time::Instant::now();
    let auth = auth_for(client, pod, &image).await;
    match img
        .pull_image(PullImageRequest {
            image: Some(spec),
            auth,
            sandbox_config: None,
        })
        .await
    {
        Ok(_) => {
            ev(
                NORMAL,
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    t.elapsed().as_secs_f64()
                ),
            );
            Ok(())
        }
        Err(e) => {
            let msg = format!(
                "failed to pull and unpack image \"{image}\": {}",
                e.message()
            );
            ev(
                WARNING,
                "Failed",
                format!("Failed to pull image \"{image}\": {msg}"),
            );
            Err(("ErrImagePull".into(), msg))
        }
    }
}
