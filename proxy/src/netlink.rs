//! Map and set elements loaded into nf_tables over netlink, for the one thing
//! `nft -f` is slow at: a full sync's ~110 000 elements at 10 000 Services cost
//! `nft` ≈ 0.6 s of CPU to parse and evaluate, where encoding them here costs
//! a few milliseconds and the kernel's own work is the same either way.
//!
//! Only `NFT_MSG_NEWSETELEM` is written: tables, chains, rules and set
//! declarations stay `nft -f` text (readable, `--explain`-able). The elements go
//! into a table no hook reaches yet (see `fullsync.rs`), so they may be loaded in
//! several batches; each batch is still one kernel transaction, and every message
//! is acknowledged, so a refused element is an error naming its set.
//!
//! (No crate covers nf_tables messages under a licence hull can take: `rustables`
//! is GPL-3.0, `nftnl`/`mnl` bind libnftnl/libmnl, GPL-2.0. The socket is
//! `netlink-sys`; the framing below is the kernel's uapi `nf_tables.h`.)

use std::os::fd::AsRawFd as _;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::element::{Dest, Key, Verdict};
use crate::nft::Family;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nf_tables netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sending an nf_tables batch: {0}")]
    Send(std::io::Error),
    #[error("reading nf_tables acknowledgements: {0}")]
    Recv(std::io::Error),
    #[error("the kernel refused elements of {family} {table} {set}: {err}")]
    Refused {
        family: &'static str,
        table: String,
        set: String,
        err: std::io::Error,
    },
    #[error("the kernel acknowledged {acked} of {sent} nf_tables messages")]
    Incomplete { acked: usize, sent: usize },
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 12;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

// enum nft_set_elem_list_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes / nft_set_elem_attributes / nft_data_attributes / nft_verdict_attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NFT_GOTO: i32 = -4;

/// A nested attribute's length is 16 bits: one message's element list stays
/// well under it.
const ELEMS_PER_MESSAGE_BYTES: usize = 48 * 1024;
/// A batch is sent with one `sendmsg`, which the socket's send buffer bounds.
const BATCH_BYTES: usize = 4 << 20;

/// The key of one element.
pub enum ElemKey<'a> {
    Key(&'a Key),
    /// `addr . addr` (the hairpin set).
    Pair(std::net::IpAddr),
}

/// The data of one element.
pub enum Data<'a> {
    /// A set element (no data).
    None,
    Verdict(&'a Verdict),
    Dest(&'a Dest),
}

/// Writes element batches to the kernel over one netlink socket.
pub struct Loader {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// The messages of the open batch that await an ack: (seq, set).
    pending: Vec<(u32, Target)>,
    /// The open NEWSETELEM message: its start and its element list's start.
    open: Option<(usize, usize)>,
    scratch: Vec<u8>,
}

#[derive(Clone)]
struct Target {
    family: Family,
    table: String,
    set: String,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_hdr(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `end_msg`
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

fn put_nfgen(buf: &mut Vec<u8>, family: u8, res_id: u16) {
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn end_msg(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(buf, ty, &v);
}

fn begin_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

impl Loader {
    pub fn new() -> Result<Loader, NetlinkError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        // Acks without a copy of the (large) message they answer.
        sock.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        let size = (BATCH_BYTES + (1 << 20)) as libc::c_int;
        // SAFETY: setsockopt on a socket we own with a pointer to a live c_int of
        // the length given. SO_SNDBUFFORCE (root) lifts net.core.wmem_max, as
        // `nft` does for its batches.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Loader {
            sock,
            buf: Vec::with_capacity(BATCH_BYTES + 64 * 1024),
            seq: 0,
            pending: Vec::new(),
            open: None,
            scratch: Vec::with_capacity(64),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn begin_batch(&mut self) {
        if self.buf.is_empty() {
            let seq = self.next_seq();
            put_hdr(&mut self.buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq);
            put_nfgen(&mut self.buf, 0, NFNL_SUBSYS_NFTABLES);
            end_msg(&mut self.buf, 0);
        }
    }

    fn open_msg(&mut self, t: &Target) {
        self.begin_batch();
        let seq = self.next_seq();
        let start = self.buf.len();
        put_hdr(
            &mut self.buf,
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            seq,
        );
        put_nfgen(&mut self.buf, nfproto(t.family), 0);
        put_str(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, &t.table);
        put_str(&mut self.buf, NFTA_SET_ELEM_LIST_SET, &t.set);
        let list = begin_nest(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        self.open = Some((start, list));
        self.pending.push((seq, t.clone()));
    }

    fn close_msg(&mut self) {
        if let Some((start, list)) = self.open.take() {
            end_nest(&mut self.buf, list);
            end_msg(&mut self.buf, start);
        }
    }

    /// Queue the elements of `set` in `table`; they reach the kernel by the
    /// batch (see [`Loader::flush`]).
    pub fn add<'a>(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: impl IntoIterator<Item = (ElemKey<'a>, Data<'a>)>,
    ) -> Result<(), NetlinkError> {
        let t = Target {
            family,
            table: table.to_string(),
            set: set.to_string(),
        };
        for (key, data) in elems {
            if self.open.is_none() {
                self.open_msg(&t);
            }
            let elem = begin_nest(&mut self.buf, NFTA_LIST_ELEM);
            let k = begin_nest(&mut self.buf, NFTA_SET_ELEM_KEY);
            self.scratch.clear();
            match key {
                ElemKey::Key(k) => k.put(&mut self.scratch),
                ElemKey::Pair(ip) => crate::element::put_pair(&mut self.scratch, ip),
            }
            put_attr(&mut self.buf, NFTA_DATA_VALUE, &self.scratch);
            end_nest(&mut self.buf, k);
            match data {
                Data::None => {}
                Data::Dest(d) => {
                    let n = begin_nest(&mut self.buf, NFTA_SET_ELEM_DATA);
                    self.scratch.clear();
                    d.put(&mut self.scratch);
                    put_attr(&mut self.buf, NFTA_DATA_VALUE, &self.scratch);
                    end_nest(&mut self.buf, n);
                }
                Data::Verdict(v) => {
                    let n = begin_nest(&mut self.buf, NFTA_SET_ELEM_DATA);
                    let vn = begin_nest(&mut self.buf, NFTA_DATA_VERDICT);
                    let (code, chain) = match v {
                        Verdict::Drop => (NF_DROP, None),
                        Verdict::Pick(p) => (NFT_GOTO, Some(p.chain())),
                        Verdict::Chain(c) => (NFT_GOTO, Some(c.clone())),
                    };
                    put_attr(&mut self.buf, NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(c) = chain {
                        put_str(&mut self.buf, NFTA_VERDICT_CHAIN, &c);
                    }
                    end_nest(&mut self.buf, vn);
                    end_nest(&mut self.buf, n);
                }
            }
            end_nest(&mut self.buf, elem);
            if let Some((_, list)) = self.open
                && self.buf.len() - list >= ELEMS_PER_MESSAGE_BYTES
            {
                self.close_msg();
                if self.buf.len() >= BATCH_BYTES {
                    self.flush()?;
                }
            }
        }
        self.close_msg();
        Ok(())
    }

    /// Send the open batch (one kernel transaction) and check every message's ack.
    pub fn flush(&mut self) -> Result<(), NetlinkError> {
        self.close_msg();
        if self.pending.is_empty() {
            self.buf.clear();
            return Ok(());
        }
        let seq = self.next_seq();
        let start = self.buf.len();
        put_hdr(&mut self.buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq);
        put_nfgen(&mut self.buf, 0, NFNL_SUBSYS_NFTABLES);
        end_msg(&mut self.buf, start);
        let kernel = SocketAddr::new(0, 0);
        let sent = self.sock.send_to(&self.buf, &kernel, 0);
        self.buf.clear();
        let pending = std::mem::take(&mut self.pending);
        sent.map_err(NetlinkError::Send)?;
        self.read_acks(&pending)
    }

    /// The kernel handles a batch inside `sendmsg`, so every answer is queued
    /// by now: read without blocking (a batch the kernel gave up on early would
    /// otherwise leave us waiting for acks that never come).
    fn read_acks(&mut self, pending: &[(u32, Target)]) -> Result<(), NetlinkError> {
        let mut acked = 0;
        let mut first_err = None;
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Recv(e)),
            }
            let mut at = 0;
            while at + NLMSG_HDRLEN <= buf.len() {
                let word = |i: usize| {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&buf[i..i + 4]);
                    b
                };
                let len = u32::from_ne_bytes(word(at)) as usize;
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let seq = u32::from_ne_bytes(word(at + 8));
                if len < NLMSG_HDRLEN || at + len > buf.len() {
                    break;
                }
                if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                    let code = i32::from_ne_bytes(word(at + NLMSG_HDRLEN));
                    if code == 0 {
                        acked += 1;
                    } else if first_err.is_none() {
                        let t = pending.iter().find(|(s, _)| *s == seq).map(|(_, t)| t);
                        first_err = Some((t.cloned(), std::io::Error::from_raw_os_error(-code)));
                    }
                }
                at += align4(len);
            }
        }
        if let Some((t, err)) = first_err {
            let (family, table, set) = match t {
                Some(t) => (t.family.table_family(), t.table, t.set),
                None => ("?", String::new(), String::new()),
            };
            return Err(NetlinkError::Refused {
                family,
                table,
                set,
                err,
            });
        }
        if acked != pending.len() {
            return Err(NetlinkError::Incomplete {
                acked,
                sent: pending.len(),
            });
        }
        Ok(())
    }
}
