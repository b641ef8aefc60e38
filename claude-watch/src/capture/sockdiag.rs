//! What a process actually sent and received over TCP, for the coverage audit (#35): the
//! kernel's own byte counters of every TCP socket (`tcp_info`'s `bytes_acked` and
//! `bytes_received`), by socket inode, from one `NETLINK_SOCK_DIAG` dump per address family.
//! Read from user space on a slow timer: nothing is added to any request's path in the
//! kernel. Sockets of other network namespaces are not in the dump (their processes are not
//! audited). The parser is pure; [`tcp_sockets`] does the I/O.
//!
//! The same socket family also says who holds the other end of a local connection
//! ([`local_peer_uid`]): the metrics listener gives each local user a share of its connections.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// One TCP socket's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes the peer acknowledged (sent).
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
/// `struct inet_diag_msg`: family, state, timer, retrans, a 48-byte socket id, then expires,
/// rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 72;
const UID_AT: usize = 64;
const INODE_AT: usize = 68;
/// `struct tcp_info`'s `tcpi_bytes_acked` and `tcpi_bytes_received`.
const BYTES_ACKED_AT: usize = 120;
const BYTES_RECEIVED_AT: usize = 128;

/// The request: a dump of every TCP socket of `family`, with `tcp_info`.
fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, extensions wanted, pad, states, socket id.
    m.extend_from_slice(&[
        family,
        libc::IPPROTO_TCP as u8,
        1 << (INET_DIAG_INFO - 1),
        0,
    ]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&[0; 48]);
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What one datagram of the dump says: sockets into `out`; `Ok(true)` once the dump is done.
///
/// # Errors
/// When the kernel answered an error.
pub fn parse(mut buf: &[u8], out: &mut HashMap<u64, Counters>) -> io::Result<bool> {
    while buf.len() >= 16 {
        let len = u32_at(buf, 0).unwrap_or(0) as usize;
        let kind = u16_at(buf, 4).unwrap_or(0);
        if len < 16 || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sock_diag: a cut message",
            ));
        }
        let body = &buf[16..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| e as i32);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG_LEN => {
                let inode = u64::from(u32_at(body, INODE_AT).unwrap_or(0));
                let mut attrs = &body[DIAG_MSG_LEN..];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16_at(attrs, 0).unwrap_or(0));
                    let atype = u16_at(attrs, 2).unwrap_or(0);
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if atype == INET_DIAG_INFO {
                        let info = &attrs[4..alen];
                        if let (Some(sent), Some(received)) = (
                            u64_at(info, BYTES_ACKED_AT),
                            u64_at(info, BYTES_RECEIVED_AT),
                        ) {
                            out.insert(inode, Counters { sent, received });
                        }
                    }
                    attrs = &attrs[(alen + 3) & !3..];
                    if attrs.is_empty() {
                        break;
                    }
                }
            }
            _ => {}
        }
        let next = (len + 3) & !3;
        if next >= buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    Ok(false)
}

/// A `NETLINK_SOCK_DIAG` socket.
fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `req` to the kernel on `fd`.
fn send(fd: &OwnedFd, req: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address for the call's duration.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every TCP socket of the daemon's network namespace (IPv4 and IPv6) with its counters, by
/// inode.
///
/// # Errors
/// When the netlink socket cannot be used.
pub fn tcp_sockets() -> io::Result<HashMap<u64, Counters>> {
    let fd = diag_socket()?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send(&fd, &request(family, seq))?;
        // A dump ends with NLMSG_DONE; bounded so a kernel that never says it cannot hold us.
        for _ in 0..10_000 {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if parse(&buf[..n as usize], &mut out)? || n == 0 {
                break;
            }
        }
    }
    Ok(out)
}

/// The request for the one TCP socket whose own end is `src` and whose peer is `dst` (an
/// exact lookup, not a dump).
fn lookup_request(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Option<Vec<u8>> {
    use std::net::IpAddr;
    fn bytes(ip: IpAddr) -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out = v6.octets(),
        }
        out
    }
    let canonical = |a: std::net::SocketAddr| a.ip().to_canonical();
    let (sip, dip) = (canonical(src), canonical(dst));
    let family = match (sip, dip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET as u8,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => return None,
    };
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports in network order, addresses, interface, no cookie.
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&bytes(sip));
    m.extend_from_slice(&bytes(dip));
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    Some(m)
}

/// The uid in the answer to a [`lookup_request`]: `None` when the kernel knows no such socket
/// (the peer is on another host or in another network namespace) or said an error.
fn parse_uid(buf: &[u8]) -> Option<u32> {
    let len = u32_at(buf, 0)? as usize;
    if len < 16 + DIAG_MSG_LEN || len > buf.len() || u16_at(buf, 4)? != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    u32_at(&buf[16..], UID_AT)
}

/// The user holding the other end of a connection accepted on `local` from `peer`, when that
/// end is a socket of this host's (and network namespace's): one exact lookup, which the
/// kernel answers at once.
#[must_use]
pub fn local_peer_uid(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u32> {
    let req = lookup_request(peer, local)?;
    let fd = diag_socket().ok()?;
    send(&fd, &req).ok()?;
    let mut buf = vec![0u8; 8 * 1024];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    parse_uid(buf.get(..usize::try_from(n).ok()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn socket(inode: u32, sent: u64, received: u64) -> Vec<u8> {
        let mut body = vec![0u8; DIAG_MSG_LEN];
        body[INODE_AT..INODE_AT + 4].copy_from_slice(&inode.to_ne_bytes());
        let mut info = vec![0u8; 232];
        info[BYTES_ACKED_AT..BYTES_ACKED_AT + 8].copy_from_slice(&sent.to_ne_bytes());
        info[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8].copy_from_slice(&received.to_ne_bytes());
        // Another attribute first, then INET_DIAG_INFO.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&5u16.to_ne_bytes());
        body.extend_from_slice(&[1, 2, 3, 4]);
        body.extend_from_slice(&(4 + info.len() as u16).to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        body.extend_from_slice(&info);
        message(SOCK_DIAG_BY_FAMILY, &body)
    }

    #[test]
    fn a_dump_is_read_socket_by_socket_to_its_end() {
        let mut d = socket(11, 1000, 64_000);
        d.extend(socket(12, 5, 7));
        let mut out = HashMap::new();
        assert!(!parse(&d, &mut out).unwrap(), "not done yet");
        assert_eq!(
            out[&11],
            Counters {
                sent: 1000,
                received: 64_000
            }
        );
        assert_eq!(
            out[&12],
            Counters {
                sent: 5,
                received: 7
            }
        );
        assert!(parse(&message(NLMSG_DONE, &[0; 4]), &mut out).unwrap());
        // An error message is an error; a cut one too.
        let e = parse(&message(NLMSG_ERROR, &(-13i32).to_ne_bytes()), &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(13));
        let mut cut = socket(13, 1, 1);
        cut.truncate(40);
        cut[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse(&cut, &mut out).is_err());
    }

    /// The kernel's own dump: a listening socket of ours is in it, by its inode.
    #[test]
    fn the_kernels_dump_has_our_socket() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let all = tcp_sockets().expect("sock_diag answers");
        assert!(
            all.contains_key(&inode),
            "{} sockets, not {inode}",
            all.len()
        );
    }

    #[test]
    fn a_local_peers_user_is_read_from_its_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(local).expect("connect");
        let (_, peer) = listener.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        // SAFETY: no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(local_peer_uid(local, peer), Some(me));
        // A peer no socket of this host has.
        let nobody: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(local_peer_uid(local, nobody), None);
    }

    #[test]
    fn a_lookup_names_the_peers_end_and_an_answer_its_uid() {
        let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let local: std::net::SocketAddr = "[::ffff:127.0.0.1]:9464".parse().expect("addr");
        let req = lookup_request(peer, local).expect("same family once canonical");
        assert_eq!(req.len(), 72);
        assert_eq!(req[16], libc::AF_INET as u8);
        assert_eq!(&req[24..26], &40000u16.to_be_bytes());
        assert_eq!(&req[26..28], &9464u16.to_be_bytes());
        assert_eq!(&req[28..32], &[127, 0, 0, 1]);
        let v6: std::net::SocketAddr = "[::1]:1".parse().expect("addr");
        assert_eq!(lookup_request(peer, v6), None);
        let mut answer = message(SOCK_DIAG_BY_FAMILY, &{
            let mut body = vec![0u8; DIAG_MSG_LEN];
            body[UID_AT..UID_AT + 4].copy_from_slice(&1001u32.to_ne_bytes());
            body
        });
        assert_eq!(parse_uid(&answer), Some(1001));
        answer.truncate(40);
        assert_eq!(parse_uid(&answer), None, "a cut answer");
        assert_eq!(
            parse_uid(&message(NLMSG_ERROR, &(-2i32).to_ne_bytes())),
            None
        );
    }
}
