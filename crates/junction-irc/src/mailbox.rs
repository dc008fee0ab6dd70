//! A puppet's job queue: one sender (the adapter's handle), one receiver (the puppet's task).
//!
//! Written here rather than taken from tokio: a `tokio::sync::mpsc::unbounded_channel` costs
//! about 800 bytes per puppet that waits idle (its shared state is padded to cache lines and
//! its first block has slots for 32 items), and thousands of puppets wait idle. This is a
//! deque and the waiting task's waker under one lock, under 100 bytes, its deque's room freed
//! whenever it empties; waiting for it adds nothing to the puppet's task but a pointer.
//! Jobs come seldom and one at a time, so the lock is never contended for long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver's task, waiting for an item.
    waiting: Option<Waker>,
    /// The receiver takes nothing more: sends fail.
    closed: bool,
    /// The sender is gone: once drained, the receiver gets `None`.
    sender_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves the deque whole: take it anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half; dropping it ends the receiver's stream once it is drained.
pub(crate) struct MailSender<T>(Arc<Shared<T>>);

/// The receiving half; dropping it (or [`MailReceiver::close`]) makes sends fail.
pub(crate) struct MailReceiver<T>(Arc<Shared<T>>);

/// A new, empty mailbox.
pub(crate) fn mailbox<T>() -> (MailSender<T>, MailReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiting: None,
            closed: false,
            sender_gone: false,
        }),
    });
    (MailSender(shared.clone()), MailReceiver(shared))
}

impl<T> MailSender<T> {
    /// Queues `item`, or gives it back when the receiver is closed or gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let waiting = {
            let mut st = self.0.lock();
            if st.closed {
                return Err(item);
            }
            st.items.push_back(item);
            st.waiting.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for MailSender<T> {
    fn drop(&mut self) {
        let waiting = {
            let mut st = self.0.lock();
            st.sender_gone = true;
            st.waiting.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
    }
}

impl<T> MailReceiver<T> {
    /// The next item, waiting for one; `None` once the sender is gone and all is taken, or
    /// after [`Self::close`] once all is taken. Cancel-safe: an item is only taken when this
    /// returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| {
            let mut st = self.0.lock();
            if let Some(item) = take(&mut st) {
                return Poll::Ready(Some(item));
            }
            if st.sender_gone || st.closed {
                return Poll::Ready(None);
            }
            // Noted under the lock a send takes too, so no item slips between.
            match &mut st.waiting {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        take(&mut self.0.lock())
    }

    /// Refuses further sends; what is queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.0.lock().closed = true;
    }
}

impl<T> Drop for MailReceiver<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.closed = true;
        st.waiting = None;
    }
}

/// Takes the first item, freeing the deque's room when that empties it.
fn take<T>(st: &mut State<T>) -> Option<T> {
    let item = st.items.pop_front()?;
    if st.items.is_empty() {
        st.items = VecDeque::new();
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_come_in_order_and_end_when_the_sender_goes() {
        let (tx, mut rx) = mailbox();
        for i in 0..5 {
            assert!(tx.send(i).is_ok());
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = mailbox::<u32>();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(tx.send(7).is_ok());
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(got, Ok(Ok(Some(7)))));
    }

    #[tokio::test]
    async fn a_wait_given_up_loses_nothing() {
        let (tx, mut rx) = mailbox::<u32>();
        // A select that picks another branch drops the wait: the item stays queued.
        tokio::select! {
            biased;
            _ = std::future::ready(()) => {}
            _ = rx.recv() => panic!("nothing was sent yet"),
        }
        assert!(tx.send(1).is_ok());
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(1));
    }

    #[tokio::test]
    async fn after_close_sends_fail_and_the_queued_can_be_taken() {
        let (tx, mut rx) = mailbox();
        assert!(tx.send(1).is_ok());
        rx.close();
        assert_eq!(tx.send(2), Err(2));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert_eq!(tx.send(3), Err(3));
    }

    #[test]
    fn an_idle_mailbox_is_small() {
        // What one idle puppet keeps for its queue, besides the two handles' pointers.
        let size = std::mem::size_of::<Shared<Box<u64>>>();
        assert!(size <= 96, "{size} bytes");
    }
}
