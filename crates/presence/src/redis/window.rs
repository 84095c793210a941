//! A flush window for Redis commands: what this node's tasks issue within
//! one window reaches Redis in one write.
//!
//! The client writes the commands queued to it together, but writes as soon
//! as its queue runs dry; on a node taking a few thousand messages a second
//! that is one write per command, each a syscall on this node and a read
//! and a write on Redis. A task that waits for the window before issuing a
//! command joins every other command of the window instead: the window
//! opens when the first one waits and closes `width` later, and every
//! waiter is woken at once, so (on the node's one thread) they all queue
//! their commands before the client writes any.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(super) struct Window {
    width: Duration,
    /// A task waits: open a window.
    wanted: Notify,
    /// The window closed: everyone waiting goes.
    closed: Notify,
}

impl Window {
    pub(super) fn new(width: Duration) -> Self {
        Self { width, wanted: Notify::new(), closed: Notify::new() }
    }

    /// Completes when the current window closes.
    pub(super) async fn wait(&self) {
        if self.width.is_zero() {
            return;
        }
        let closed = self.closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        self.wanted.notify_one();
        closed.await;
    }

    /// Opens and closes windows while anyone waits, until `stop`.
    pub(super) async fn run(&self, stop: CancellationToken) {
        if self.width.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.closed.notify_waiters();
                    return;
                }
                () = self.wanted.notified() => {}
            }
            tokio::time::sleep(self.width).await;
            self.closed.notify_waiters();
        }
    }
}
