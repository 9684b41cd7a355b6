//! A small synchronous rtnetlink client: one socket, one request at a time, acked.
//!
//! Messages are `netlink-packet-route` types; this module only frames them, sends
//! them and reads the acknowledgement (or the dump). Synchronous on purpose: a CNI
//! plugin does a dozen requests and exits, and a runtime would cost more than it saves.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{CniError, Result};
use crate::netns::NetNs;

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Extended acks make the kernel's error strings available; harmless if refused.
        let _ = sock.set_ext_ack(true);
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// A socket bound to `ns` (opened on a thread inside it).
    pub fn open_in(ns: &NetNs) -> Result<Self> {
        ns.run(|| {
            Self::open().map_err(|e| {
                CniError::netlink(format!("netlink socket in {}", ns.path().display()), e)
            })
        })
    }

    /// Sends one request and collects the reply messages until ACK or DONE.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            let mut off = 0usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([
                    self.buf[off],
                    self.buf[off + 1],
                    self.buf[off + 2],
                    self.buf[off + 3],
                ]) as usize;
                if len < 16 || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..off + len])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    // ---- links ----

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(mut v) => match v.pop() {
                Some(RouteNetlinkMessage::NewLink(l)) => Ok(Some(l)),
                _ => Ok(None),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<LinkMessage>> {
        let v = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(v.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Creates a veth pair whose peer is born inside `peer_ns` under its final name,
    /// so there is no window where the container side sits in the host namespace.
    #[allow(clippy::too_many_arguments)]
    pub fn add_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        peer_ns: &NetNs,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // The peer cannot be born up: veth_open() refuses (ENOTCONN) until both ends
        // exist, so the caller brings it up from inside the netns.
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.fd().as_raw_fd()));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Controller(master));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Sets (`on`) or clears flags in `mask` on link `index`.
    pub fn set_flags(&mut self, index: u32, mask: LinkFlags, on: LinkFlags) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = on;
        m.header.change_mask = mask;
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    pub fn set_hairpin(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_ACK)?;
        Ok(())
    }

    /// Deletes link `index`; a link that is already gone is not an error.
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Deletes link `index` (named `name`) without waiting out the kernel's teardown.
    ///
    /// Deleting a veth blocks the caller ~20 ms in RCU grace periods after the device
    /// is already unlisted (name free, off the bridge, invisible to dumps). A forked
    /// (double-forked, so it is never our zombie) process sends the request and absorbs
    /// that wait; we return as soon as a dump no longer shows the link. The children
    /// only call async-signal-safe functions, so this is sound even when threaded.
    pub fn del_link_detached(&mut self, index: u32, name: &str) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut m = LinkMessage::default();
        m.header.index = index;
        let mut nl = NetlinkMessage::from(RouteNetlinkMessage::DelLink(m));
        nl.header.flags = NLM_F_REQUEST;
        nl.header.sequence_number = u32::MAX;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        let child_sock = Socket::new(NETLINK_ROUTE)?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return self.del_link(index);
        }
        if pid == 0 {
            // SAFETY: fork, dup2, sendto and _exit are async-signal-safe.
            unsafe {
                // Fork again and let the middle process exit at once: the sender is
                // then reparented to init and never lingers as our zombie.
                if libc::fork() != 0 {
                    libc::_exit(0);
                }
                // Our caller reads stdout to EOF: the sender must not hold it open.
                for fd in 0..3 {
                    libc::dup2(devnull.as_raw_fd(), fd);
                }
                let mut addr: libc::sockaddr_nl = std::mem::zeroed();
                addr.nl_family = libc::AF_NETLINK as u16;
                libc::sendto(
                    child_sock.as_raw_fd(),
                    out.as_ptr().cast(),
                    out.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                );
                libc::_exit(0);
            }
        }
        drop(child_sock);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let gone = loop {
            match self.link_by_name(name) {
                Ok(Some(l)) if l.header.index == index => {}
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            }
            if std::time::Instant::now() > deadline {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{name} still present after delete"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        };
        // Reaped last: by now the middle process has long exited, so this never waits.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        gone
    }

    // ---- addresses ----

    fn addr_msg(index: u32, net: &IpNet, nodad: bool) -> AddressMessage {
        let mut m = AddressMessage::default();
        let ip = net.addr();
        m.header.family = family(&ip);
        m.header.prefix_len = net.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip
            && let IpNet::V4(n) = net
            && n.prefix_len() < 31
        {
            m.attributes
                .push(AddressAttribute::Broadcast(n.broadcast()));
            let _ = v4;
        }
        if nodad && ip.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m
    }

    /// Adds `net` (address + prefix) to link `index`; already present is fine.
    pub fn add_address(&mut self, index: u32, net: &IpNet) -> io::Result<()> {
        // DAD would make the address unusable for ~1s; addresses come from IPAM,
        // which already guarantees uniqueness on this bridge.
        let m = Self::addr_msg(index, net, true);
        match self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    pub fn del_address(&mut self, index: u32, net: &IpNet) -> io::Result<()> {
        let m = Self::addr_msg(index, net, false);
        match self.request(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Addresses on link `index` (all links when `None`).
    pub fn addresses(&mut self, index: Option<u32>) -> io::Result<Vec<(u32, IpNet)>> {
        let v = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    // ---- routes ----

    fn route_msg(dst: &IpNet, gw: Option<IpAddr>, oif: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    }

    /// Adds a route; an identical route already present is fine.
    pub fn add_route(&mut self, dst: &IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let m = Self::route_msg(dst, gw, oif);
        match self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Adds or replaces a route tagged with `protocol` (so its owner finds it again).
    pub fn replace_route(
        &mut self,
        dst: &IpNet,
        gw: Option<IpAddr>,
        oif: u32,
        protocol: u8,
    ) -> io::Result<()> {
        let mut m = Self::route_msg(dst, gw, oif);
        m.header.protocol = RouteProtocol::from(protocol);
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// Deletes a route; one already gone is fine.
    pub fn del_route(&mut self, dst: &IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut m = Self::route_msg(dst, gw, oif);
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        match self.request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Main-table routes as (destination, gateway, output link).
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<(IpNet, Option<IpAddr>, u32)>> {
        Ok(self
            .routes_with_protocol(v6)?
            .into_iter()
            .map(|(n, g, o, _)| (n, g, o))
            .collect())
    }

    /// Main-table routes as (destination, gateway, output link, protocol).
    pub fn routes_with_protocol(&mut self, v6: bool) -> io::Result<Vec<RouteEntry>> {
        let mut q = RouteMessage::default();
        q.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let v = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut dst = None;
            let mut gw = None;
            let mut oif = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(IpAddr::V4(*ip)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(IpAddr::V6(*ip)),
                    RouteAttribute::Oif(i) => oif = *i,
                    _ => {}
                }
            }
            let any: IpAddr = if v6 {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            };
            if let Ok(net) = IpNet::new(dst.unwrap_or(any), r.header.destination_prefix_length) {
                out.push((net, gw, oif, u8::from(r.header.protocol)));
            }
        }
        Ok(out)
    }
}

/// A main-table route: (destination, gateway, output link, protocol number).
pub type RouteEntry = (IpNet, Option<IpAddr>, u32, u8);

/// Helpers to read attributes out of a link message.
pub fn link_mac(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn link_master(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}
