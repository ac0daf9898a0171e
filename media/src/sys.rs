//! The few Linux system calls the relay batches with: `recvmmsg`/`sendmmsg` (many datagrams
//! per syscall), `epoll` (one thread waits on every leg's socket) and `eventfd` (commands wake
//! the engine). All unsafe code of the media crate is here, each block with its reason.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::rtp::MAX_PACKET;

/// Datagrams per batched syscall.
pub const BATCH: usize = 64;

/// Reusable buffers for one `recvmmsg`; the message headers point into the heap buffers
/// (which never move once built), so each call only resets the lengths.
pub struct RecvBatch {
    pub bufs: Vec<[u8; MAX_PACKET]>,
    pub lens: [usize; BATCH],
    pub from: [Option<SocketAddr>; BATCH],
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let mut bufs = vec![[0u8; MAX_PACKET]; BATCH];
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
        let mut iovecs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: MAX_PACKET,
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; all zeroes is valid, the pointers are set below.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
        for (i, msg) in msgs.iter_mut().enumerate() {
            msg.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_iov = &mut iovecs[i];
            msg.msg_hdr.msg_iovlen = 1;
        }
        RecvBatch {
            bufs,
            lens: [0; BATCH],
            from: [None; BATCH],
            addrs,
            iovecs,
            msgs,
        }
    }
}

impl RecvBatch {
    /// Read up to `BATCH` datagrams without blocking; returns how many (0 when none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        debug_assert_eq!(self.iovecs.len(), BATCH);
        for msg in self.msgs.iter_mut() {
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_len = 0;
        }
        // SAFETY: every pointer in `msgs` points into `bufs`, `addrs` or `iovecs`, heap
        // buffers owned by `self` that are never resized; the lengths are the buffers' own.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.msgs[i].msg_len as usize;
            self.from[i] = from_storage(&self.addrs[i]);
        }
        Ok(n)
    }
}

/// Send many datagrams from one socket in one syscall (retrying the remainder on a short
/// count); datagrams the kernel refuses are dropped, as a congested network would.
pub fn send_batch(fd: RawFd, packets: &[(&[u8], SocketAddr)]) -> usize {
    let mut sent = 0;
    for chunk in packets.chunks(BATCH) {
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            chunk.iter().map(|(_, a)| to_storage(a)).collect();
        let mut iovecs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(b, _)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: plain old data, pointers set below.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; chunk.len()];
        for i in 0..chunk.len() {
            msgs[i].msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = addrs[i].1;
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut offset = 0;
        while offset < msgs.len() {
            // SAFETY: the pointers point into `addrs`, `iovecs` and the caller's slices, all
            // alive for the call; the kernel only reads the payloads.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[offset..].as_mut_ptr(),
                    (msgs.len() - offset) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // Full buffer or an unreachable peer: skip this datagram and go on.
                offset += 1;
                continue;
            }
            offset += n as usize;
            sent += n as usize;
        }
    }
    sent
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data; all zeroes is valid.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin: &mut libc::sockaddr_in = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (s, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watch `fd` for reading; `token` comes back with its readiness.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives for the call; the result is checked.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) {
        // SAFETY: removing an fd that may already be gone only returns an error.
        unsafe {
            libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
        }
    }

    /// Wait up to `timeout_ms`; fills `tokens` with the ready ones.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        tokens.clear();
        // SAFETY: plain old data.
        let mut events: [libc::epoll_event; 256] = unsafe { zeroed() };
        // SAFETY: `events` has room for the 256 events we allow.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), 256, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            tokens.push(ev.u64);
        }
        Ok(())
    }
}

/// An eventfd: a counter other threads bump to wake the engine.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full counter only fails (ignored: the
        // engine is already due to wake).
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN when not signalled is fine.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }
}

/// The address family's unspecified address, for binding next to `ip`.
pub fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Send `segments` (equal sizes, the last may be shorter) to one address in one datagram
/// buffer with UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18+): the kernel
/// cuts it into datagrams, paying its per-packet costs once. `scratch` is reused.
pub fn send_gso(fd: RawFd, segments: &[&[u8]], to: SocketAddr, scratch: &mut Vec<u8>) -> io::Result<usize> {
    let Some(first) = segments.first() else { return Ok(0) };
    let seg = first.len();
    if seg == 0 || segments.len() > BATCH || segments.iter().any(|s| s.len() > seg) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not segmentable"));
    }
    if segments[..segments.len() - 1].iter().any(|s| s.len() != seg) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not segmentable"));
    }
    scratch.clear();
    for s in segments {
        scratch.extend_from_slice(s);
    }
    let (mut addr, addr_len) = to_storage(&to);
    let mut iov = libc::iovec {
        iov_base: scratch.as_mut_ptr().cast(),
        iov_len: scratch.len(),
    };
    // Room for one cmsg carrying a u16, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
    // SAFETY: msg_control points at `control`, large enough for one u16 cmsg (checked by
    // CMSG_SPACE above, 64 bytes available); CMSG_FIRSTHDR is non-null for a non-empty buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = 103; // UDP_SEGMENT
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg as u16);
    }
    // SAFETY: every pointer in `msg` is valid for the call; the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(segments.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batched_and_segmented_sends_arrive_as_separate_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let a = [1u8; 100];
        let b = [2u8; 100];
        let c = [3u8; 40];
        let mut scratch = Vec::new();
        // GSO may be missing (old kernels): then the batch path must do the same.
        if send_gso(tx.as_raw_fd(), &[&a, &b, &c], to, &mut scratch).is_err() {
            assert_eq!(send_batch(tx.as_raw_fd(), &[(&a, to), (&b, to), (&c, to)]), 3);
        }
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        // Loopback delivers before send returns; a few reads collect everything.
        for _ in 0..10 {
            let n = batch.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                got.push(batch.bufs[i][..batch.lens[i]].to_vec());
                assert_eq!(batch.from[i], Some(tx.local_addr().unwrap()));
            }
            if got.len() == 3 {
                break;
            }
        }
        assert_eq!(got, vec![a.to_vec(), b.to_vec(), c.to_vec()]);
        assert!(
            send_gso(tx.as_raw_fd(), &[&c, &a], to, &mut scratch).is_err(),
            "a longer segment after a shorter one"
        );
    }
}
