//! The DNS server: UDP and TCP listeners answering from a shared [`DnsModel`],
//! forwarding names outside the cluster zone to upstream resolvers.
//!
//! Packets are parsed and built with `hickory-proto`; anything it cannot parse
//! gets FORMERR (when there is a header to answer) and never takes the server down.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::dns_model::{DnsModel, Lookup, QType, Rec, RecData};

/// TTL of cluster answers (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading resolver config {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Shared state of a running server.
#[derive(Debug, Clone)]
pub struct DnsState {
    pub model: Arc<RwLock<DnsModel>>,
    pub upstreams: Vec<SocketAddr>,
}

/// `nameserver` lines of a resolv.conf (port 53). `nameserver IP#PORT` is also
/// accepted so a test can point at a fake upstream on an unprivileged port.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| {
            let v = v.trim();
            let (ip, port) = v
                .split_once('#')
                .map_or((v, 53), |(i, p)| (i, p.parse().unwrap_or(53)));
            ip.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port))
        })
        .collect())
}

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::CNAME => QType::Cname,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

fn fqdn(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

fn formerr(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 2 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// Our EDNS UDP payload size (the DNS Flag Day 2020 recommendation).
const EDNS_PAYLOAD: u16 = 1232;

/// Answer one packet. `None` means "send nothing" (not even a header to answer).
/// Over UDP (`udp`), answers larger than the client can take are truncated with TC
/// set, so it retries over TCP.
pub async fn handle(state: &DnsState, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let Ok(req) = Message::from_vec(packet) else {
        return formerr(packet);
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    if req.metadata.op_code != OpCode::Query || req.queries.len() != 1 {
        let code = if req.metadata.op_code != OpCode::Query {
            ResponseCode::NotImp
        } else {
            ResponseCode::FormErr
        };
        return Message::error_msg(req.metadata.id, req.metadata.op_code, code)
            .to_vec()
            .ok();
    }
    let q = req.queries[0].clone();
    let qname = q.name().to_ascii();
    let lookup = match state.model.read() {
        Ok(m) => {
            let l = m.lookup(&qname, qtype(q.query_type()));
            (l, m.zone().to_string())
        }
        Err(_) => {
            return Message::error_msg(req.metadata.id, OpCode::Query, ResponseCode::ServFail)
                .to_vec()
                .ok();
        }
    };
    let (lookup, zone) = lookup;
    if lookup == Lookup::NotOurs {
        return Some(forward(state, &req, packet).await);
    }
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    // A client that speaks EDNS gets an OPT back (RFC 6891 6.1.1) and may take
    // more than 512 bytes over UDP.
    let mut udp_limit = 512usize;
    if let Some(e) = &req.edns {
        udp_limit = usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD));
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(ours);
    }
    match lookup {
        Lookup::Records(recs) => {
            let outside = match recs.last() {
                Some(Rec {
                    data: RecData::Cname(t),
                    ..
                }) if !in_zone(t, &zone)
                    && matches!(q.query_type(), RecordType::A | RecordType::AAAA) =>
                {
                    Some(t.clone())
                }
                _ => None,
            };
            for r in recs {
                let Some(name) = fqdn(&r.name) else { continue };
                let rdata = match r.data {
                    RecData::Addr(IpAddr::V4(ip)) => RData::A(A(ip)),
                    RecData::Addr(IpAddr::V6(ip)) => RData::AAAA(AAAA(ip)),
                    RecData::Cname(t) => match fqdn(&t) {
                        Some(n) => RData::CNAME(CNAME(n)),
                        None => continue,
                    },
                    RecData::Ptr(t) => match fqdn(&t) {
                        Some(n) => RData::PTR(PTR(n)),
                        None => continue,
                    },
                    RecData::Srv { port, target } => match fqdn(&target) {
                        Some(n) => RData::SRV(SRV::new(0, 100, port, n)),
                        None => continue,
                    },
                };
                resp.add_answer(Record::from_rdata(name, TTL, rdata));
            }
            // An ExternalName pointing outside the cluster: its target's addresses
            // come from upstream, in the same answer (CoreDNS does the same).
            if let Some(target) = outside {
                for rec in chase_upstream(state, &req, &target, q.query_type()).await {
                    resp.add_answer(rec);
                }
            }
        }
        Lookup::NxDomain | Lookup::NoData => {
            if lookup == Lookup::NxDomain {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            // The SOA in the authority section lets resolvers cache the negative answer.
            if let (Some(z), Some(m), Some(r)) = (
                fqdn(&zone),
                fqdn(&format!("ns.dns.{zone}")),
                fqdn(&format!("hostmaster.{zone}")),
            ) {
                let soa = SOA::new(m, r, 1, 7200, 1800, 86400, TTL);
                resp.add_authority(Record::from_rdata(z, TTL, RData::SOA(soa)));
            }
        }
        Lookup::NotOurs => {}
    }
    let bytes = resp.to_vec().ok()?;
    if udp && bytes.len() > udp_limit {
        let mut t = resp.truncate();
        t.metadata.truncation = true;
        return t.to_vec().ok();
    }
    Some(bytes)
}

fn in_zone(name: &str, zone: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n == zone || n.ends_with(&format!(".{zone}"))
}

/// The `qtype` records of `target`, asked upstream; none if it fails or has none.
async fn chase_upstream(
    state: &DnsState,
    req: &Message,
    target: &str,
    qtype: RecordType,
) -> Vec<Record> {
    let Some(name) = fqdn(target) else {
        return Vec::new();
    };
    let mut q = Message::query();
    q.metadata.id = req.metadata.id;
    q.metadata.recursion_desired = true;
    q.add_query(hickory_proto::op::Query::query(name, qtype));
    let Ok(bytes) = q.to_vec() else {
        return Vec::new();
    };
    match Message::from_vec(&forward(state, &q, &bytes).await) {
        Ok(m) if m.metadata.response_code == ResponseCode::NoError => m.answers,
        _ => Vec::new(),
    }
}

async fn forward(state: &DnsState, req: &Message, packet: &[u8]) -> Vec<u8> {
    for up in &state.upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(packet, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        loop {
            match tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == *up && n >= 2 && buf[..2] == packet[..2] => {
                    return buf[..n].to_vec();
                }
                Ok(Ok(_)) => continue,
                _ => break,
            }
        }
    }
    let mut m = Message::error_msg(req.metadata.id, OpCode::Query, ResponseCode::ServFail);
    m.queries = req.queries.clone();
    m.to_vec().unwrap_or_default()
}

/// Serve UDP until the socket fails.
pub async fn serve_udp(sock: UdpSocket, state: DnsState) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let packet = buf[..n].to_vec();
        let (sock, state) = (sock.clone(), state.clone());
        tokio::spawn(async move {
            if let Some(resp) = handle(&state, &packet, true).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

/// Serve DNS over TCP (2-byte length prefix per message, RFC 1035 4.2.2).
pub async fn serve_tcp(listener: TcpListener, state: DnsState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(stream, &state).await;
        });
    }
}

async fn tcp_conn(mut s: TcpStream, state: &DnsState) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(Duration::from_secs(10), s.read_u16()).await {
            Ok(Ok(l)) => l as usize,
            _ => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        let Some(resp) = handle(state, &buf, false).await else {
            return Ok(());
        };
        let Ok(rlen) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        s.write_u16(rlen).await?;
        s.write_all(&resp).await?;
    }
}

/// Bind UDP and TCP on the same `addr` (port 0: one free port for both).
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    // Port 0 picks a free UDP port, which TCP may already use: pick again (a few times)
    // rather than fail. A fixed port fails at once, naming it.
    let tries = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        let bound = udp
            .local_addr()
            .map_err(|source| DnsError::Bind { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(source) => {
                last = Some(DnsError::Bind {
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(DnsError::Bind {
        addr,
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    }))
}

/// Bind UDP and TCP on `addr` and serve both in the background (detached tasks).
pub async fn spawn(addr: SocketAddr, state: DnsState) -> Result<SocketAddr, DnsError> {
    let (udp, tcp, bound) = bind(addr).await?;
    tokio::spawn(serve_udp(udp, state.clone()));
    tokio::spawn(serve_tcp(tcp, state));
    Ok(bound)
}
