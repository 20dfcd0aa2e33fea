//! The Unix socket file of `--unix`: bound so that it never exists with a wider mode than
//! asked, replaced when stale, removed at the end only if it is still the one this server
//! made, and the client process's id for the logs.

use super::*;

/// A file's device and inode: what tells the socket file this server made from another
/// put at the same path since (another server's, or anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    pub(super) fn of(path: &Path) -> io::Result<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }
}

/// The client process's id on a Unix socket (`SO_PEERCRED`), if the kernel says.
pub(super) fn peer_pid(socket: &mio::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut credentials: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let result = libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        );
        (result == 0 && credentials.pid > 0).then_some(credentials.pid as u32)
    }
}

/// Removes the socket file at `path` if it is still the one this server made: another
/// server may have replaced it since (taking it for stale after this one stopped
/// answering), or anyone may have put another file there, and neither is this server's to
/// remove.
pub(super) fn remove_socket_file(path: &Path, made: FileIdentity) {
    match FileIdentity::of(path) {
        Ok(found) if found == made => {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("Cannot remove the socket file {}: {e}", path.display());
            }
        }
        Ok(_) => log::info!(
            "Leaving {} in place: it is no longer the socket file this server made",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("Cannot check the socket file {}: {e}", path.display()),
    }
}

/// A Unix stream socket listening at `path`, with file mode `mode` if given (else as the
/// umask makes it). A socket file at `path` that nobody listens on is left from a server
/// that did not stop cleanly: it is replaced. A live one, or anything that is not a socket,
/// is an error naming the path.
pub(crate) fn bind_unix(
    path: &Path,
    mode: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "cannot listen on {shown}: another process is listening there"
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("Replacing the stale socket file {shown} (nobody listens on it)");
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove the stale socket file {shown}: {e}"))?;
                }
                Err(e) => return Err(format!("cannot listen on {shown}: {e}")),
            }
        }
        Ok(metadata) => {
            let what = if metadata.is_dir() {
                "a directory"
            } else if metadata.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            return Err(format!(
                "cannot listen on {shown}: it exists and is {what}, not a socket; remove it \
                 or choose another path"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot listen on {shown}: {e}")),
    }
    match mode {
        None => std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {shown}: {e}")),
        Some(mode) => bind_unix_with_mode(path, mode),
    }
}

/// Binds `path` with file mode `mode` without the socket ever being reachable under a
/// wider one: `bind` creates the file as the umask makes it, so it is made in a private
/// directory (mode 700, beside `path`), given its mode there, and only then linked in at
/// `path` (which, unlike a rename, never replaces a file that appeared there meanwhile).
/// The umask itself is left alone: it is the whole process's, other threads' files too.
pub(super) fn bind_unix_with_mode(
    path: &Path,
    mode: u32,
) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let shown = path.display();
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let private = parent.join(format!(".kv_server.{}.{made}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            format!(
                "cannot listen on {shown}: cannot make {}: {e}",
                private.display()
            )
        })?;
    let staged = private.join("s");
    let result = std::os::unix::net::UnixListener::bind(&staged)
        .map_err(|e| format!("cannot listen on {shown}: {e}"))
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set the mode of {shown} to {mode:o}: {e}"))?;
            std::fs::hard_link(&staged, path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => {
                    format!("cannot listen on {shown}: another process took the path meanwhile")
                }
                _ => format!("cannot listen on {shown}: {e}"),
            })?;
            Ok(listener)
        });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}
