//! `runtime.v1.ImageService` over `hull_runtime::image::ImageStore`: pulls (with the
//! request's credentials for that registry and its mirrors), list, status, remove and
//! the image filesystem's usage.

use base64::Engine;
use hull_runtime::image::auth::Credentials;
use hull_runtime::image::pull::Quiet;
use hull_runtime::image::{ImageRecord, ImageStore, Reference};
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::error::CriError;
use super::records::now_ns;
use super::runtime_service::{Cri, Key, dir_usage};

/// The CRI image for the record `r`, with the tags and digests of every record of the
/// same image (one image pulled under several names is one image with several
/// repoTags, as containerd lists it), and the user its config runs as.
fn to_image(store: &ImageStore, r: &ImageRecord, all: &[ImageRecord]) -> Image {
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for x in all.iter().filter(|x| x.config_digest == r.config_digest) {
        let repo = x.name.split('@').next().unwrap_or(&x.name);
        let base = match repo.rfind(':') {
            Some(i) if !repo[i..].contains('/') => &repo[..i],
            _ => repo,
        };
        if !x.name.contains('@') && !repo_tags.contains(&x.name) {
            repo_tags.push(x.name.clone());
        }
        let d = format!("{base}@{}", x.manifest_digest);
        if !repo_digests.contains(&d) {
            repo_digests.push(d);
        }
    }
    // The image's USER: a numeric uid, else a name (a group after ':' is not part of it).
    let user = store
        .config(r)
        .ok()
        .and_then(|c| c.config)
        .and_then(|c| c.user)
        .unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(Int64Value { value: n }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    Image {
        id: r.config_digest.clone(),
        repo_tags,
        repo_digests,
        size: r.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: r.config_digest.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One entry per image (records sharing a config digest are one image).
fn list_images(store: &ImageStore) -> Result<Vec<Image>, CriError> {
    let all = store.list()?;
    let mut seen = std::collections::HashSet::new();
    Ok(all
        .iter()
        .filter(|r| seen.insert(r.config_digest.clone()))
        .map(|r| to_image(store, r, &all))
        .collect())
}

/// ImageStatus by name without listing every image: the CRI image of each record's
/// name, built once per version of the store's `images.json` (a pull or removal
/// replaces it), so the agent's status call per container start is a map lookup.
/// Names the index does not hold (digests, ids, prefixes) take the store's own lookup.
mod by_name {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use hull_runtime::image::{ImageStore, Reference};
    use k8s_cri::v1::Image;

    use super::super::records::{self, Ident};
    use super::{CriError, to_image};

    type Index = (Ident, Arc<HashMap<String, Image>>);

    static INDEX: Mutex<Option<Index>> = Mutex::new(None);

    pub fn status(st: &ImageStore, name: &str) -> Result<Option<Image>, CriError> {
        // Read before the records: an index built from newer records than this
        // identity is only rebuilt once more, never trusted for too long.
        let now = records::ident(&st.root().join("images.json"));
        let key = Reference::parse(name).map(|r| r.to_string()).ok();
        let index = match now {
            Some(now) => {
                let held = INDEX
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|(at, _)| *at == now)
                    .map(|(_, m)| m.clone());
                match held {
                    Some(m) => Some(m),
                    None => {
                        let all = st.list()?;
                        let m: HashMap<String, Image> = all
                            .iter()
                            .map(|r| (r.name.clone(), to_image(st, r, &all)))
                            .collect();
                        let m = Arc::new(m);
                        *INDEX.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, m.clone()));
                        Some(m)
                    }
                }
            }
            None => None,
        };
        if let (Some(m), Some(k)) = (&index, &key)
            && let Some(img) = m.get(k)
        {
            return Ok(Some(img.clone()));
        }
        let all = st.list()?;
        Ok(st.get(name).ok().map(|r| to_image(st, &r, &all)))
    }
}

fn credentials(a: &AuthConfig) -> Result<Option<Credentials>, CriError> {
    if !a.username.is_empty() {
        return Ok(Some(Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
        }));
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| CriError::InvalidArgument(format!("auth.auth: not base64: {e}")))?;
        let s = String::from_utf8(raw)
            .map_err(|_| CriError::InvalidArgument("auth.auth: not UTF-8".into()))?;
        let (u, p) = s.split_once(':').ok_or_else(|| {
            CriError::InvalidArgument("auth.auth: want base64(USER:PASSWORD)".into())
        })?;
        return Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        }));
    }
    Ok(None)
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(
        &self,
        _r: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let images = self
            .read(|s| {
                let st = s
                    .images
                    .read()
                    .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
                list_images(&st)
            })
            .await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        r: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let name = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("image.image: must not be empty"));
        }
        let image = self
            .read(move |s| {
                let st = s
                    .images
                    .read()
                    .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
                by_name::status(&st, &name)
            })
            .await?;
        Ok(Response::new(ImageStatusResponse {
            image,
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        r: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let r = r.into_inner();
        let name = r.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("image.image: must not be empty"));
        }
        let reference = Reference::parse(&name)
            .map_err(|e| Status::invalid_argument(format!("image.image: {e}")))?;
        let creds = match &r.auth {
            Some(a) => credentials(a).map_err(Status::from)?,
            None => None,
        };
        let id = self
            .read(move |s| {
                if let Some(c) = creds {
                    let mut st = s
                        .images
                        .write()
                        .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
                    st.registry
                        .credentials
                        .insert(reference.registry.clone(), c.clone());
                    for url in st
                        .registry
                        .flag_mirrors
                        .get(&reference.registry)
                        .cloned()
                        .unwrap_or_default()
                    {
                        let host = url.split_once("://").map_or(&url[..], |(_, h)| h);
                        let host = host.split('/').next().unwrap_or(host).to_string();
                        st.registry.credentials.insert(host, c.clone());
                    }
                }
                let st = s
                    .images
                    .read()
                    .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
                Ok(st.pull(&name, &Quiet)?.config_digest)
            })
            .await?;
        Ok(Response::new(PullImageResponse { image_ref: id }))
    }

    async fn remove_image(
        &self,
        r: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let name = r.into_inner().image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("image.image: must not be empty"));
        }
        // The store's write lock: no CreateContainer (which holds it for reading) is
        // between resolving this image and leasing its layers.
        self.locked("RemoveImage", Key::New, move |s| {
            let st = s
                .images
                .write()
                .map_err(|_| CriError::Internal("image store lock poisoned".into()))?;
            // By id, every name of the image goes (as containerd removes an image by id).
            let hex = name.strip_prefix("sha256:").unwrap_or(&name);
            let mut names: Vec<String> = st
                .list()?
                .into_iter()
                .filter(|r| r.config_digest.strip_prefix("sha256:") == Some(hex))
                .map(|r| r.name)
                .collect();
            if names.is_empty() {
                names.push(name.clone());
            }
            for n in names {
                match st.remove(&n, false) {
                    Ok(_) | Err(hull_runtime::image::Error::NotFound(_)) => {}
                    Err(e) => {
                        return Err(CriError::FailedPrecondition(format!(
                            "remove image {n}: {e}"
                        )));
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _r: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let fs = self
            .read(|s| {
                let d = s.cfg.data_dir.join("snapshots");
                let (b, n) = dir_usage(&d);
                Ok(FilesystemUsage {
                    timestamp: now_ns(),
                    fs_id: Some(FilesystemIdentifier {
                        mountpoint: d.display().to_string(),
                    }),
                    used_bytes: Some(UInt64Value { value: b }),
                    inodes_used: Some(UInt64Value { value: n }),
                })
            })
            .await?;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The status index follows the store: an image imported under a second name is
    /// found by it (with both tags), a removed name is gone, and the answers match the
    /// store's own lookup.
    #[test]
    fn status_by_name_follows_imports_and_removals() {
        let d = std::env::temp_dir().join(format!("hull-imgidx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _rm = Rm(d.clone());
        let layout = d.join("layout");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/images/mkimage.py"
        );
        let made = std::process::Command::new("python3")
            .args([script, &layout.display().to_string(), "busybox", "1"])
            .status()
            .expect("run mkimage.py");
        assert!(made.success(), "mkimage.py failed");
        let st = ImageStore::open(&d.join("store")).expect("open store");
        let a = hull_runtime::image::import::import(&st, &layout, Some("localhost/idx-a"))
            .expect("import a")
            .remove(0);
        let got = by_name::status(&st, &a.name)
            .unwrap()
            .expect("a is present");
        assert_eq!(got.id, a.config_digest);
        assert!(by_name::status(&st, "localhost/idx-b:1").unwrap().is_none());
        // By id (not an index key): the store's own lookup.
        let by_id = by_name::status(&st, &a.config_digest).unwrap();
        assert_eq!(by_id.map(|i| i.id), Some(a.config_digest.clone()));

        let b = hull_runtime::image::import::import(&st, &layout, Some("localhost/idx-b"))
            .expect("import b")
            .remove(0);
        assert_ne!(a.name, b.name);
        let got = by_name::status(&st, &b.name)
            .unwrap()
            .expect("b is present");
        assert_eq!(got.id, a.config_digest);
        let mut tags = got.repo_tags.clone();
        tags.sort();
        assert_eq!(tags, vec![a.name.clone(), b.name.clone()]);

        st.remove(&a.name, false).expect("remove a");
        assert!(by_name::status(&st, &a.name).unwrap().is_none());
        let got = by_name::status(&st, &b.name).unwrap().expect("b stays");
        assert_eq!(got.repo_tags, vec![b.name.clone()]);
    }
}
