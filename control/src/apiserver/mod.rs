//! The API server: HTTPS (rustls, HTTP/2 and HTTP/1.1) with client-certificate and
//! bearer-token authentication, discovery, OpenAPI, health, and the REST handlers over a
//! [`Store`].
//!
//! Modules: [`tls`] CA and certificates; [`kubeconfig`] kubeconfig files; [`auth`]
//! authentication and the authorizer trait; [`authn`] request authentication (certificates,
//! tokens, impersonation); [`sa_token`] ServiceAccount tokens (TokenRequest, JWKS);
//! [`bootstrap_token`] node join tokens; [`csr`] CertificateSigningRequest rules;
//! [`reviews`] access/rules/token reviews; [`master_endpoints`] the `kubernetes` Service; [`rbac`] authorization (Node + RBAC, the
//! default roles); [`registry`] the served resources;
//! [`conversion`] versions stored in another version's form; [`discovery`] discovery
//! documents; [`openapi`] OpenAPI v2/v3; [`protobuf`] protobuf request bodies; [`status`]
//! Status errors;
//! [`rest`] the resource handlers; [`serve`] the listener, routing and shutdown.

pub mod auth;
pub mod authn;
pub mod bootstrap_token;
pub mod conversion;
pub mod csr;
pub mod discovery;
pub mod kubeconfig;
pub mod master_endpoints;
pub mod openapi;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod rest;
pub mod reviews;
pub mod sa_token;
pub mod serve;
pub mod status;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::Store;

pub use serve::{ServerError, run, run_until_signal};

/// Everything `hull server` is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `etcd://h1:2379,...`; default `sqlite:<data_dir>/state.db`.
    pub store_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub service_cluster_ip_range: String,
    pub advertise_address: Option<IpAddr>,
    /// Run the scheduler and controllers (the controller manager) in this process.
    pub controllers: bool,
    pub manager: crate::manager::ManagerOptions,
    /// How often old revisions are compacted away (tests shorten it to see 410 Gone).
    pub compactor: crate::store::CompactorConfig,
    /// The ServiceAccount admission plugin's token volume on new pods (default on).
    pub service_account_token_volumes: bool,
}

impl Options {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Options {
            data_dir,
            listen,
            store_url: None,
            token_file: None,
            service_cluster_ip_range: "10.96.0.0/12".into(),
            advertise_address: None,
            controllers: true,
            manager: crate::manager::ManagerOptions::default(),
            compactor: crate::store::CompactorConfig::default(),
            service_account_token_volumes: true,
        }
    }
}

/// Shared by every request handler.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub tokens: auth::TokenFile,
    pub authorizer: Arc<rbac::ClusterAuthorizer>,
    /// Signs and verifies ServiceAccount tokens.
    pub service_accounts: Option<Arc<sa_token::Signer>>,
    /// Whether new pods get the `kube-api-access-*` volume.
    pub service_account_token_volumes: bool,
    pub admission: crate::admission::Admission,
    /// The URL clients reach this server at (for `/api`'s serverAddressByClientCIDRs).
    pub server_address: String,
    pub service_cluster_ip_range: String,
    /// TLS towards kubelets (pods/log, exec, attach, portforward, nodes/proxy, metrics).
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
    /// Flips to true on shutdown so long-running watches end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
