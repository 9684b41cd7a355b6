//! The parent ↔ init channel: a SOCK_SEQPACKET socketpair carrying one-byte tags with an
//! optional payload. Message boundaries are kept by the kernel, so no framing is needed,
//! and a peer that dies shows up as end-of-file instead of a hang.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};

use crate::error::{Context, Error, Result};

/// Tags of the messages exchanged during setup.
pub mod tag {
    /// parent → init: namespaces/cgroup/maps are ready, carry on.
    pub const GO: u8 = b'G';
    /// parent → init: you are in the container's cgroup now. Sent after GO because
    /// moving a task between cgroups can wait for an RCU grace period; init builds
    /// the rootfs meanwhile.
    pub const CGROUP_DONE: u8 = b'C';
    /// intermediate → parent: please write my uid/gid maps.
    pub const MAPS: u8 = b'M';
    /// intermediate → parent: the init's pid (i32, native endian).
    pub const PID: u8 = b'P';
    /// init → parent: run prestart/createRuntime hooks now (mounts done, before pivot).
    pub const HOOKS: u8 = b'H';
    /// parent → init: hooks done.
    pub const HOOKS_DONE: u8 = b'h';
    /// init → parent: set up; waiting for start (or about to exec for `run`).
    pub const READY: u8 = b'R';
    /// init → parent: setup failed; payload is the message.
    pub const ERROR: u8 = b'E';
}

pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair: (parent end, child end). Both close on exec.
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair".into())?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one message. If the peer is gone, its last words (an ERROR it sent before
    /// exiting) are the useful error, not the broken pipe.
    pub fn send(&self, tag: u8, payload: &[u8]) -> Result<()> {
        let r = self.send_raw(tag, payload);
        if r.is_err()
            && let Ok(Some((tag::ERROR, m))) = self.recv()
        {
            return Err(Error::Init(String::from_utf8_lossy(&m).into_owned()));
        }
        r
    }

    fn send_raw(&self, tag: u8, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(1 + payload.len());
        buf.push(tag);
        buf.extend_from_slice(payload);
        loop {
            let n = unsafe {
                libc::send(
                    self.raw(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).ctx(|| "send to container init".into());
            }
        }
    }

    /// Receives one message; `None` on end-of-file (the peer exited or exec'd).
    pub fn recv(&self) -> Result<Option<(u8, Vec<u8>)>> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                buf.truncate(n as usize);
                let tag = buf.remove(0);
                return Ok(Some((tag, buf)));
            }
            if n == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            // A peer that exits with our message unread resets the connection; the error
            // is reported once, and its queued messages (its ERROR) are still readable.
            if e.kind() != io::ErrorKind::Interrupted && e.raw_os_error() != Some(libc::ECONNRESET)
            {
                return Err(e).ctx(|| "receive from container init".into());
            }
        }
    }

    /// Receives and insists on `want`; an ERROR message becomes `Error::Init`.
    pub fn expect(&self, want: u8) -> Result<Vec<u8>> {
        match self.recv()? {
            Some((t, p)) if t == want => Ok(p),
            Some((tag::ERROR, p)) => Err(Error::Init(String::from_utf8_lossy(&p).into_owned())),
            Some((t, _)) => Err(Error::Init(format!("unexpected message {:?}", t as char))),
            None => Err(Error::Init("exited during setup".into())),
        }
    }
}

/// Sends `fd` over a unix socket with SCM_RIGHTS (the console-socket protocol: the
/// payload is the terminal's name, as runc sends it).
pub fn send_fd(sock: BorrowedFd<'_>, fd: RawFd, name: &[u8]) -> Result<()> {
    let fds = [fd];
    let iov = [io::IoSlice::new(name)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .ctx(|| "send terminal over console socket".into())?;
    Ok(())
}

/// Receives one fd sent with SCM_RIGHTS (used by tests and by `hull` to act as the
/// console-socket receiver).
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "receive fd".into())?;
    for c in msg.cmsgs().ctx(|| "receive fd".into())? {
        if let socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(Error::Other("no fd received on console socket".into()))
}
