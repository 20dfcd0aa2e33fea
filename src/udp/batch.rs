//! The system calls of the datagram echo: a batch received with one `recvmmsg` into the
//! slots, and the answers sent with as few `sendmmsg` calls as errors allow, a run of
//! equal-sized answers to one sender as one segmented send (UDP GSO), falling back to one
//! datagram at a time where the kernel or the route refuses; the senders' addresses as the
//! kernel wrote them. A segmented send is one pass through the stack for the run: on
//! loopback it took the server's CPU per datagram from 2.6 to 2.0 us (docs/performance.md
//! has the runs). Each slot of the batch holds the largest datagram; the slots' pages are
//! touched only as far as datagrams fill them.

use super::*;

/// Each received datagram's length, and the length of its sender's address.
pub(super) type Received = [(usize, libc::socklen_t); BATCH];

/// Takes up to [`BATCH`] datagrams into the slots with one `recvmmsg`: how many came, and
/// for each its length and the length of its sender's address (no allocation per batch).
pub(super) fn receive_batch(
    fd: std::os::fd::RawFd,
    slots: &mut [u8],
    senders: &mut [libc::sockaddr_storage],
) -> io::Result<(usize, Received)> {
    // SAFETY: iovec and mmsghdr are plain data; every pointer set below points into
    // `slots` and `senders`, which outlive the call, with the lengths they have.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (slot, sender)) in slots
        .chunks_exact_mut(SLOT)
        .zip(senders.iter_mut())
        .enumerate()
    {
        iovecs[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: SLOT,
        };
        headers[i].msg_hdr.msg_name = (sender as *mut libc::sockaddr_storage).cast();
        headers[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        headers[i].msg_hdr.msg_iov = &mut iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers` describes BATCH valid buffers, as set up above.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut lengths = [(0, 0); BATCH];
    for (length, header) in lengths.iter_mut().zip(&headers[..received as usize]) {
        *length = (header.msg_len as usize, header.msg_hdr.msg_namelen);
    }
    Ok((received as usize, lengths))
}

/// What one batch of answers came to.
#[derive(Debug, Default)]
pub(super) struct Sent {
    pub sent: usize,
    pub bytes: usize,
    /// Dropped: the socket's send buffer was full.
    pub no_room: usize,
    /// Dropped: the send failed otherwise (the destination unreachable, say).
    pub failed: usize,
}

pub(super) const UNSPECIFIED: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// `UDP_SEGMENT` (Linux 4.18): the segment size of a send that the kernel cuts into
/// datagrams of that size (the last may be shorter). Not in the libc crate for glibc yet.
pub(super) const UDP_SEGMENT: libc::c_int = 103;

/// Answers to one sender sent as one segmented send, at most.
pub(super) const MAX_SEGMENTS: usize = 32;

/// Only datagrams this small are sent segmented: a segment must fit the path's MTU
/// (1,500 bytes on most links, less IPv6's 48 bytes of headers).
pub(super) const MAX_SEGMENT_BYTES: usize = 1_400;

/// Sends each answer (a slot, its length and its sender) back to its sender, with as few
/// `sendmmsg` calls as errors allow. With `segmentation`, a run of equal-sized answers to
/// one sender (the last may be shorter) goes as one message the kernel cuts into
/// datagrams (UDP GSO): one pass through the stack for the run. A kernel without it turns
/// `segmentation` off for good.
pub(super) fn send_batch(
    fd: std::os::fd::RawFd,
    slots: &[u8],
    senders: &[libc::sockaddr_storage],
    answers: &[(usize, usize, SocketAddr)],
    segmentation: &mut bool,
) -> Sent {
    let mut outcome = Sent::default();
    // Runs of answers: (first, count, segment size).
    let mut runs = [(0usize, 0usize, 0usize); BATCH];
    let mut run_count = 0;
    let mut first = 0;
    while first < answers.len() {
        let (_, size, sender) = answers[first];
        let mut count = 1;
        if *segmentation && size <= MAX_SEGMENT_BYTES {
            while first + count < answers.len() && count < MAX_SEGMENTS {
                let (_, next_size, next_sender) = answers[first + count];
                if next_sender != sender || next_size > size || next_size == 0 {
                    break;
                }
                count += 1;
                if next_size < size {
                    break; // A shorter datagram can only be the last segment.
                }
            }
        }
        runs[run_count] = (first, count, size);
        run_count += 1;
        first += count;
    }
    // SAFETY: as in receive_batch; the kernel only reads through these pointers, which
    // point into `slots`, `senders` and the arrays here, all alive across the calls.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = [[0u64; 4]; BATCH];
    for (i, &(slot, len, _)) in answers.iter().enumerate() {
        iovecs[i] = libc::iovec {
            iov_base: slots[slot * SLOT..].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
    }
    for (r, &(first, count, size)) in runs[..run_count].iter().enumerate() {
        let sender = &senders[answers[first].0];
        let header = &mut headers[r].msg_hdr;
        header.msg_name = (sender as *const libc::sockaddr_storage) as *mut _;
        header.msg_namelen = match i32::from(sender.ss_family) {
            libc::AF_INET6 => std::mem::size_of::<libc::sockaddr_in6>(),
            _ => std::mem::size_of::<libc::sockaddr_in>(),
        } as libc::socklen_t;
        header.msg_iov = &mut iovecs[first];
        header.msg_iovlen = count;
        if count > 1 {
            header.msg_control = controls[r].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of a u16 fits the 32 bytes of `controls[r]`; the
            // header pointer is the buffer's start, aligned for cmsghdr.
            unsafe {
                header.msg_controllen = libc::CMSG_SPACE(2) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size as u16);
            }
        }
    }
    let run_bytes = |&(first, count, _): &(usize, usize, usize)| -> usize {
        answers[first..first + count].iter().map(|a| a.1).sum()
    };
    let mut start = 0;
    while start < run_count {
        // SAFETY: headers[start..run_count] are set up above.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                headers[start..].as_mut_ptr(),
                (run_count - start) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent > 0 {
            for run in &runs[start..start + sent as usize] {
                outcome.sent += run.1;
                outcome.bytes += run_bytes(run);
            }
            start += sent as usize;
            continue;
        }
        let (first, count, _) = runs[start];
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => {}
            e if e.kind() == io::ErrorKind::WouldBlock => {
                outcome.no_room += runs[start..run_count].iter().map(|r| r.1).sum::<usize>();
                break;
            }
            // A segmented send the kernel or the route refuses: its answers go one by
            // one, and a kernel without segmentation is not asked again.
            e if count > 1 => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EINVAL)
                ) {
                    *segmentation = false;
                }
                let single = send_batch(
                    fd,
                    slots,
                    senders,
                    &answers[first..first + count],
                    &mut false,
                );
                outcome.sent += single.sent;
                outcome.bytes += single.bytes;
                outcome.no_room += single.no_room;
                outcome.failed += single.failed;
                start += 1;
            }
            // This answer failed: the others may not.
            _ => {
                outcome.failed += 1;
                start += 1;
            }
        }
    }
    outcome
}

/// A sender's address as the kernel wrote it.
pub(super) fn socket_addr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in, which sockaddr_storage is laid out to
            // hold.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(v4.sin_port),
            ))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                v6.sin6_addr.s6_addr.into(),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Errors a receive reports for an earlier datagram's fate, not for the socket.
pub(super) fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ECONNRESET
        )
    )
}
