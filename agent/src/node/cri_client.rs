//! The agent's CRI v1 client: one gRPC channel over the runtime's unix socket, shared by
//! every pod worker (tonic multiplexes calls over HTTP/2).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::NodeError;

#[derive(Clone)]
pub struct Cri {
    pub endpoint: PathBuf,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(sock: &Path) -> Result<Cri, NodeError> {
        let path = sock
            .to_str()
            .map(|s| s.strip_prefix("unix://").unwrap_or(s).to_string())
            .ok_or_else(|| NodeError::Options(format!("cri endpoint {sock:?} is not UTF-8")))?;
        let p = PathBuf::from(&path);
        let conn = p.clone();
        let ch = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| cri_err(&p, e))?
            .connect_with_connector(tower::service_fn(move |_| {
                let s = conn.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
                }
            }))
            .await
            .map_err(|e| cri_err(&p, e))?;
        Ok(Cri {
            endpoint: p,
            rt: RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
            img: ImageServiceClient::new(ch).max_decoding_message_size(64 << 20),
        })
    }

    pub fn err(&self, what: &str, e: impl std::fmt::Display) -> NodeError {
        NodeError::Cri {
            endpoint: self.endpoint.display().to_string(),
            message: format!("{what}: {e}"),
        }
    }
}

fn cri_err(p: &Path, e: impl std::fmt::Display) -> NodeError {
    NodeError::Cri {
        endpoint: p.display().to_string(),
        message: e.to_string(),
    }
}
