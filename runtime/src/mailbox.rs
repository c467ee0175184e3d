//! Bounded, lock-free hand-off from the control loop to a consumer thread.
//!
//! The tick pushes without blocking or allocating; when the mailbox is full the
//! oldest entry is replaced and counted, because for commands the newest matters.
//! The consumer is woken with `unpark` (a futex wake, no lock shared with the tick).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

pub struct Mailbox<T> {
    queue: ArrayQueue<T>,
    consumer: OnceLock<Thread>,
    dropped: AtomicU64,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: ArrayQueue::new(capacity),
            consumer: OnceLock::new(),
            dropped: AtomicU64::new(0),
        })
    }

    /// Pushes `value`, replacing the oldest entry when full; never blocks.
    pub fn send(&self, value: T) {
        if self.queue.force_push(value).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(thread) = self.consumer.get() {
            thread.unpark();
        }
    }

    /// Takes the oldest entry if there is one.
    pub fn try_recv(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Takes the oldest entry, parking the calling thread up to `timeout` for one.
    /// The first caller becomes the consumer that `send` wakes.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<T> {
        self.wait(timeout);
        self.queue.pop()
    }

    /// Parks the calling thread until something is sent or `timeout` passes (returns
    /// at once when entries are waiting). The first caller becomes the consumer.
    pub fn wait(&self, timeout: Duration) {
        let _ = self.consumer.set(std::thread::current());
        if self.queue.is_empty() {
            std::thread::park_timeout(timeout);
        }
    }

    /// Entries replaced because the consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_mailbox_keeps_the_newest_and_counts_drops() {
        let mailbox = Mailbox::new(2);
        mailbox.send(1);
        mailbox.send(2);
        mailbox.send(3);
        assert_eq!(mailbox.dropped(), 1);
        assert_eq!(mailbox.try_recv(), Some(2));
        assert_eq!(mailbox.try_recv(), Some(3));
        assert_eq!(mailbox.try_recv(), None);
    }

    #[test]
    fn consumer_is_woken_by_send() {
        let mailbox = Mailbox::new(4);
        let consumer = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 3 {
                    if let Some(v) = mailbox.recv_timeout(Duration::from_secs(5)) {
                        got.push(v);
                    }
                }
                got
            })
        };
        for v in 0..3 {
            mailbox.send(v);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(consumer.join().unwrap(), vec![0, 1, 2]);
    }
}
