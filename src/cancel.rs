//! Cancellation shared by every long operation of a run.
//!
//! The first Ctrl-C/SIGTERM *cancels* (no new steps start, measuring steps stop, cleanup runs
//! gracefully); a second one makes it *urgent* (cleanup skips graceful waits but still runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::watch;

/// A cloneable cancellation token with two levels.
#[derive(Clone)]
pub struct Cancel {
    level: Arc<AtomicU8>,
    tx: Arc<watch::Sender<u8>>,
    rx: watch::Receiver<u8>,
}

impl Default for Cancel {
    fn default() -> Self {
        let (tx, rx) = watch::channel(0);
        Cancel { level: Arc::new(AtomicU8::new(0)), tx: Arc::new(tx), rx }
    }
}

impl Cancel {
    /// Raises the level by one (1 = cancelled, 2 = urgent).
    pub fn escalate(&self) {
        let level = (self.level.fetch_add(1, Ordering::SeqCst) + 1).min(2);
        self.tx.send_replace(level);
    }

    pub fn cancel(&self) {
        if !self.is_cancelled() {
            self.escalate();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.level.load(Ordering::SeqCst) >= 1
    }

    pub fn is_urgent(&self) -> bool {
        self.level.load(Ordering::SeqCst) >= 2
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|l| *l >= 1).await;
    }

    /// Resolves once urgent.
    pub async fn urgent(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|l| *l >= 2).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn levels() {
        let c = Cancel::default();
        assert!(!c.is_cancelled());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        c.escalate();
        waiter.await.unwrap();
        assert!(c.is_cancelled() && !c.is_urgent());
        c.escalate();
        c.urgent().await;
        assert!(c.is_urgent());
    }
}
