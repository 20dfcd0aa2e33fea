//! A network namespace of a test's own: its thread unshares one, and the servers, clients
//! and tools (nft) it starts from then on live in it, so that the test can set sysctls and
//! firewall rules without touching the machine. Needs root (as in CI).

/// Moves this thread (and every process and thread it starts from now on) into a new
/// network namespace with its loopback up.
pub fn enter_private_network() -> Result<(), String> {
    // SAFETY: unshare only changes this thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot make a network namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    loopback_up().map_err(|e| format!("cannot bring the loopback up: {e}"))
}

/// Enters a private network, or fails the test saying why (it needs root). Tests that call
/// it are `#[ignore]`d with that reason, so that `cargo test` shows them as not run.
pub fn enter() {
    if let Err(why) = enter_private_network() {
        panic!("{why} (run as root, as CI does)");
    }
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain ioctls on a socket this function owns, with a zeroed, named ifreq.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if socket < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let mut rc = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        if rc == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(socket, libc::SIOCSIFFLAGS, &request);
        }
        let result = if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        libc::close(socket);
        result
    }
}
