//! Seccomp user notification (`SCMP_ACT_NOTIFY`): the kernel parks a matching syscall
//! and asks a supervisor, the "seccomp agent", what to do with it.
//!
//! The agent listens on the spec's `linux.seccomp.listenerPath`. The container's init
//! loads the filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER`, which returns the listener
//! fd; init hands it to the runtime over its sync socket ([`send_fd`], allocation-free
//! so it is safe after fork), and the runtime passes it on to the agent with the
//! container process state, as the OCI runtime spec describes ([`send_to_agent`]).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use oci_spec::runtime::ContainerProcessState;

use super::SeccompError;

/// Space for one fd's control message (CMSG_SPACE(sizeof(int)) on Linux).
const CMSG_BUF: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF]);

/// Sends `payload` and `fd` (as SCM_RIGHTS) on a connected unix socket. Makes no
/// allocation, so a forked child may call it.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, payload: &[u8]) -> std::io::Result<()> {
    let mut cbuf = CmsgBuf([0; CMSG_BUF]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below points at live locals, and
    // the CMSG_* helpers stay within `cbuf`, which is CMSG_SPACE(sizeof(int)) or more.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd.as_raw_fd());
        if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives a message sent by [`send_fd`]: the payload length and the fd, if any.
pub fn recv_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut cbuf = CmsgBuf([0; CMSG_BUF]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: as in send_fd; the kernel writes at most msg_controllen bytes of control
    // data and the received fd becomes ours (MSG_CMSG_CLOEXEC keeps it from leaking).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = CMSG_BUF as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut fd = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, fd))
    }
}

/// Hands the listener fd to the seccomp agent at `listener_path` with the container
/// process state (`fds: ["seccompFd"]`), per the OCI runtime spec.
pub fn send_to_agent(
    listener_path: &Path,
    listener: BorrowedFd<'_>,
    state: &ContainerProcessState,
) -> Result<(), SeccompError> {
    let err = |source: std::io::Error| SeccompError::Agent {
        path: listener_path.to_path_buf(),
        source,
    };
    let mut state = state.clone();
    state.set_fds(vec![oci_spec::runtime::SECCOMP_FD_NAME.to_string()]);
    let json = serde_json::to_vec(&state).map_err(|e| err(std::io::Error::other(e)))?;
    crate::explain!(
        "sendmsg(seccomp listener fd, SCM_RIGHTS) to agent at {}",
        listener_path.display()
    );
    let mut sock = UnixStream::connect(listener_path).map_err(err)?;
    // SAFETY: `sock` is a live socket for the duration of the borrow.
    let sock_fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    send_fd(sock_fd, listener, &json).map_err(err)?;
    sock.flush().map_err(err)
}
