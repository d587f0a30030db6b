//! Linux inotify through `libc`, read with tokio's `AsyncFd`: the journal watchers of
//! `kitt serve` wake when a run's files change instead of looking at them every few
//! milliseconds. Events are only a wake-up: the watcher then looks at the files themselves, so a
//! lost or merged event (inotify coalesces, and its queue can overflow) costs nothing but a
//! slower wake by the caller's safety poll.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

/// What a watched directory reports: a file in it written, made, moved in or out, or removed.
const MASK: u32 = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE;

pub struct Inotify {
    fd: AsyncFd<OwnedFd>,
    /// Directories watched already (adding one again is harmless, but costs a call).
    watched: HashSet<PathBuf>,
}

impl Inotify {
    /// A new instance; fails where the kernel has none or the per-user limit is reached, and the
    /// caller then polls.
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just returned to us and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an `OwnedFd` always returns the one descriptor it owns, open until it drops,
        // which is when the `AsyncFd` drops.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Inotify { fd, watched: HashSet::new() })
    }

    /// Watches the directory at `dir` (its entries' changes) if it exists and is not watched
    /// yet; whether it is watched now.
    pub fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.contains(dir) {
            return true;
        }
        let Ok(path) = CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
        // SAFETY: a valid descriptor and a NUL-terminated path, which the call only reads.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK | libc::IN_ONLYDIR) };
        if wd < 0 {
            return false;
        }
        self.watched.insert(dir.to_path_buf());
        true
    }

    /// Waits until something happened in a watched directory, then drains the queue (the events
    /// themselves are not needed: the caller looks at the files).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            let mut any = false;
            loop {
                // SAFETY: reads at most `buf.len()` bytes into `buf` from our own descriptor.
                let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    any = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if n < 0 && e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                break;
            }
            guard.clear_ready();
            if any {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_in_a_watched_directory_wakes_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut ino = Inotify::new().unwrap();
        assert!(ino.watch(dir.path()));
        assert!(!ino.watch(&dir.path().join("missing")), "a directory that does not exist is not watched");
        let file = dir.path().join("journal.jsonl");
        std::fs::write(&file, b"x\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), ino.changed()).await.unwrap().unwrap();
        // Drained: nothing more until the next change.
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), ino.changed()).await;
        assert!(quiet.is_err(), "the queue was drained");
        use std::io::Write as _;
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"y\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), ino.changed()).await.unwrap().unwrap();
    }
}
