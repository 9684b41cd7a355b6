//! The node agent and its kubelet API inside `hull up`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use hull_agent::{kubelet_api, node};
use tokio::sync::watch;

use super::UpArgs;

pub fn spawn(
    client: kube::Client,
    node_name: &str,
    node_ip: IpAddr,
    data_dir: &Path,
    socket: &Path,
    args: &UpArgs,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = node::Options::new(node_name, socket.to_path_buf(), data_dir.join("agent"));
    opts.cluster_dns = vec![args.cluster_dns];
    opts.cluster_domain = args.cluster_domain.clone();
    opts.node_ip = Some(node_ip);
    opts.kubelet_port = args.kubelet_port;
    opts.max_pods = args.max_pods;
    let mut api = kubelet_api::Options::new(
        node_name,
        data_dir.join("ca.crt"),
        data_dir.join("ca.key"),
        socket.to_path_buf(),
    );
    api.listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), args.kubelet_port);
    api.node_ips = vec![node_ip];
    let api_stop = stop.clone();
    tokio::spawn(async move {
        let kubelet = tokio::spawn(async move {
            if let Err(e) = kubelet_api::serve(api, super::wait_stop(api_stop)).await {
                eprintln!("hull up: kubelet API: {e}");
            }
        });
        // An agent that fails (the API not yet answering, say) is started again, as a
        // service manager would restart kubelet; pods keep running meanwhile.
        loop {
            match node::run(client.clone(), opts.clone(), super::wait_stop(stop.clone())).await {
                Ok(()) => break,
                Err(e) => eprintln!("hull up: node agent: {e}; restarting it in 2 s"),
            }
            tokio::select! {
                () = super::wait_stop(stop.clone()) => break,
                () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
        }
        let _ = kubelet.await;
    })
}
