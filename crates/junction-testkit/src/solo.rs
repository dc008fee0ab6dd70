//! One adapter on its own, with the test standing in for the gateway.
//!
//! [`solo`] builds the channels an adapter gets from the gateway, a [`MemStore`]-backed
//! [`AdapterContext`] (through [`AdapterContext::standalone`], the store handle scoped to the
//! adapter's network), keeps the commands and status receivers, spawns `adapter.run(cx)` and
//! hands the test the gateway's ends: deliveries to send, answers and inbound events to read,
//! the linked rooms to change, and the shutdown token. [`Solo::inbox`] stands in for the
//! gateway's store: it keeps every inbound event in an [`Inbox`] and acknowledges it.
//! [`delivery`], [`said`] and [`person`] build the deliveries a test hands the adapter.

use junction_core::{
    Adapter, AdapterContext, AdapterError, BridgeName, Command, Delivered, Delivery, Event,
    EventKind, Inbound, Message, MessageId, MessageKind, NetworkId, NetworkStatus, Pastes,
    RichText, RoomId, RoomRef, Sender, UserRef,
};
use junction_store::{MemStore, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How many inbound events and deliveries wait in their channels (the gateway's sizes).
const CHANNEL: usize = 64;
/// How many admin commands wait for the test.
const COMMANDS: usize = 8;

/// A running adapter and the gateway's ends of its channels.
pub struct Solo {
    /// Deliveries to the adapter, as the gateway hands them out.
    pub deliveries: mpsc::Sender<Delivery>,
    /// The adapter's answers to deliveries.
    pub delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Events from the network (ack them, or drop them to refuse).
    pub inbound: mpsc::Receiver<Inbound>,
    /// Admin commands people typed to the gateway's identity (answer through `reply`).
    pub commands: mpsc::Receiver<Command>,
    /// The adapter's state, as `/health` would show it.
    pub status: watch::Receiver<NetworkStatus>,
    /// The linked rooms on the adapter's network: send a new list to link or unlink.
    pub rooms: watch::Sender<Vec<RoomId>>,
    /// Cancel to stop the adapter.
    pub shutdown: CancellationToken,
    /// The whole store behind the adapter's handle.
    pub store: Arc<dyn Store>,
    /// The adapter's `run`.
    pub task: JoinHandle<Result<(), AdapterError>>,
}

impl std::fmt::Debug for Solo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solo")
            .field("status", &*self.status.borrow())
            .field("rooms", &*self.rooms.borrow())
            .finish_non_exhaustive()
    }
}

impl Solo {
    /// Cancels the adapter and waits for its `run` to return.
    pub async fn stop(self) -> Result<(), AdapterError> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| AdapterError::Fatal(format!("the adapter task failed: {e}")))?
    }

    /// The adapter's next answer to a delivery, waited for at most `deadline`.
    pub async fn next_delivered(&mut self, deadline: Duration) -> anyhow::Result<Delivered> {
        tokio::time::timeout(deadline, self.delivered.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to a delivery within {deadline:?}"))?
            .ok_or_else(|| anyhow::anyhow!("adapter stopped"))
    }

    /// Waits at most `deadline` until the adapter reports [`NetworkStatus::Connected`].
    pub async fn connected(&mut self, deadline: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(
            deadline,
            self.status.wait_for(|s| *s == NetworkStatus::Connected),
        )
        .await
        .map_err(|_| anyhow::anyhow!("not connected within {deadline:?}"))?
        .map_err(|_| anyhow::anyhow!("adapter stopped"))?;
        Ok(())
    }

    /// Takes the receiver of inbound events, for a stand-in for the gateway of the test's own;
    /// `inbound` is closed after.
    pub fn take_inbound(&mut self) -> mpsc::Receiver<Inbound> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.inbound, closed)
    }

    /// From now on keeps every inbound event in the returned [`Inbox`] and acknowledges it as
    /// stored, as the gateway does once an event is durable; `inbound` is closed after.
    pub fn inbox(&mut self) -> Inbox {
        let mut inbound = self.take_inbound();
        let inbox = Inbox::default();
        let events = inbox.events.clone();
        tokio::spawn(async move {
            while let Some(i) = inbound.recv().await {
                lock(&events).push(i.event);
                if let Some(ack) = i.ack {
                    let _ = ack.send(Ok(()));
                }
            }
        });
        inbox
    }
}

/// Outbox row `outbox_id` of the bridge `lobby` for `target`: `kind` by `sender`, as the
/// event `$e<outbox_id>` of the room `#lobby:matrix.test` on the sender's network.
pub fn delivery(outbox_id: u64, target: RoomRef, sender: &Sender, kind: EventKind) -> Delivery {
    Delivery {
        outbox_id,
        bridge: BridgeName::new("lobby"),
        target,
        event: Event::new(
            RoomRef::new(sender.user.network.clone(), "#lobby:matrix.test"),
            MessageId::new(format!("$e{outbox_id}")),
            sender.clone(),
            0,
            kind,
        ),
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    }
}

/// A message of `kind` whose body is the plain `text`.
pub fn said(kind: MessageKind, text: &str) -> EventKind {
    EventKind::Message(Message {
        kind,
        body: RichText::plain(text),
        reply_to: None,
        attachments: Vec::new(),
    })
}

/// `name` on `network` (the user `@name:<network>.test`), shown as `name`.
pub fn person(network: &str, name: &str) -> Sender {
    Sender::new(
        UserRef::new(network, format!("@{name}:{network}.test")),
        name,
    )
}

/// The inbound events of a [`Solo`] adapter, in the order it sent them (see [`Solo::inbox`]).
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    events: Arc<Mutex<Vec<Event>>>,
}

fn lock(events: &Mutex<Vec<Event>>) -> std::sync::MutexGuard<'_, Vec<Event>> {
    events.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `event` is a message whose plain text is exactly `text`.
pub fn is_message(event: &Event, text: &str) -> bool {
    matches!(&event.kind, EventKind::Message(m) if m.body.to_plain() == text)
}

impl Inbox {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// How many events so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        lock(&self.events).iter().filter(|e| f(e)).count()
    }

    /// How many messages so far had exactly this plain text.
    pub fn messages(&self, text: &str) -> usize {
        self.count(|e| is_message(e, text))
    }

    /// How many joins so far were by someone shown as `display_name`.
    pub fn joins(&self, display_name: &str) -> usize {
        self.count(|e| matches!(e.kind, EventKind::Join) && e.sender.display_name == display_name)
    }

    /// The first event satisfying `f`, waited for at most `deadline`; `what` names it in the
    /// error.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        f: impl Fn(&Event) -> bool,
    ) -> anyhow::Result<Event> {
        let f = &f;
        crate::eventually(deadline, what, || {
            let found = lock(&self.events).iter().find(|e| f(e)).cloned();
            async move { found }
        })
        .await
    }

    /// The first message with exactly this plain text, waited for at most `deadline`.
    pub async fn wait_message(&self, deadline: Duration, text: &str) -> anyhow::Result<Event> {
        self.wait_for(deadline, &format!("the message {text:?}"), |e| {
            is_message(e, text)
        })
        .await
    }

    /// Waits at most `deadline` until `n` joins by someone shown as `display_name` arrived.
    pub async fn wait_joins(
        &self,
        deadline: Duration,
        display_name: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        crate::eventually(deadline, &format!("{n} joins of {display_name}"), || {
            let done = self.joins(display_name) >= n;
            async move { done.then_some(()) }
        })
        .await
    }
}

/// Starts `adapter` as network `network` on a fresh [`MemStore`], linked to `rooms`.
pub fn solo<A: Adapter>(adapter: A, network: NetworkId, rooms: Vec<RoomId>) -> Solo {
    solo_on(adapter, Arc::new(MemStore::new()), network, rooms)
}

/// [`solo`] on a store of the test's (one kept across a restart, or one that fails).
pub fn solo_on<A: Adapter>(
    adapter: A,
    store: Arc<dyn Store>,
    network: NetworkId,
    rooms: Vec<RoomId>,
) -> Solo {
    solo_with(adapter, store, None, network, rooms)
}

/// [`solo_on`], the adapter keeping long texts in `pastes` as the gateway's would.
pub fn solo_with<A: Adapter>(
    adapter: A,
    store: Arc<dyn Store>,
    pastes: Option<Arc<dyn Pastes>>,
    network: NetworkId,
    rooms: Vec<RoomId>,
) -> Solo {
    let (inbound_tx, inbound) = mpsc::channel(CHANNEL);
    let (deliveries, deliveries_rx) = mpsc::channel(CHANNEL);
    let (delivered_tx, delivered) = mpsc::unbounded_channel();
    let (rooms, rooms_rx) = watch::channel(rooms);
    let (commands_tx, commands) = mpsc::channel(COMMANDS);
    let (status_tx, status) = watch::channel(NetworkStatus::Connecting);
    let shutdown = CancellationToken::new();
    let cx = AdapterContext {
        commands: commands_tx,
        status: status_tx,
        pastes,
        ..AdapterContext::standalone(
            junction_store::scoped(store.clone(), network),
            inbound_tx,
            deliveries_rx,
            delivered_tx,
            rooms_rx,
            shutdown.clone(),
        )
    };
    let task = tokio::spawn(adapter.run(cx));
    Solo {
        deliveries,
        delivered,
        inbound,
        commands,
        status,
        rooms,
        shutdown,
        store,
        task,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Answers each delivery, says one thing per delivery, keeps a row, reports its rooms.
    struct Echo;

    impl Adapter for Echo {
        async fn run(self, mut cx: AdapterContext) -> Result<(), AdapterError> {
            let rooms = cx.rooms.borrow().len();
            cx.status
                .send_replace(NetworkStatus::Degraded(format!("{rooms} rooms")));
            loop {
                tokio::select! {
                    () = cx.shutdown.cancelled() => return Ok(()),
                    d = cx.deliveries.recv() => {
                        let Some(d) = d else { return Ok(()) };
                        cx.store
                            .put("seen", &d.outbox_id.to_string(), b"1")
                            .map_err(|e| AdapterError::Fatal(e.to_string()))?;
                        let _ = cx.delivered.send(d.answer(Ok(vec![MessageId::new("r")])));
                        let said = Event::new(
                            d.target.clone(),
                            MessageId::new(format!("echo{}", d.outbox_id)),
                            d.event.sender.clone(),
                            1,
                            EventKind::Join,
                        );
                        let _ = cx.inbound.send(Inbound::new(said)).await;
                    }
                }
            }
        }
    }

    /// Bob's join on an IRC network, outbox row `outbox_id` for `#a` on the echo network.
    fn bobs_join(outbox_id: u64) -> Delivery {
        delivery(
            outbox_id,
            RoomRef::new("echo", "#a"),
            &person("irc:x", "bob"),
            EventKind::Join,
        )
    }

    #[tokio::test]
    async fn the_test_holds_the_gateway_ends() {
        let mut solo = solo(Echo, NetworkId::new("echo"), vec![RoomId::new("#a")]);
        let status = solo
            .status
            .wait_for(|s| *s != NetworkStatus::Connecting)
            .await;
        assert_eq!(*status.unwrap(), NetworkStatus::Degraded("1 rooms".into()));
        solo.deliveries.send(bobs_join(7)).await.unwrap();
        let answer = solo.delivered.recv().await.unwrap();
        assert_eq!(answer.outbox_id, 7);
        assert!(answer.outcome.is_ok());
        let said = solo.inbound.recv().await.unwrap();
        assert_eq!(said.event.remote_id.as_str(), "echo7");
        // The adapter's rows are in its own namespace of the store.
        assert_eq!(
            solo.store.kv_get("echo/seen", "7").unwrap(),
            Some(b"1".to_vec())
        );
        solo.stop().await.unwrap();
    }

    #[tokio::test]
    async fn the_inbox_keeps_and_acknowledges_what_the_adapter_says() {
        let mut solo = solo(Echo, NetworkId::new("echo"), vec![RoomId::new("#a")]);
        let inbox = solo.inbox();
        solo.connected(Duration::from_millis(50)).await.unwrap_err();
        for outbox_id in [1, 2] {
            solo.deliveries.send(bobs_join(outbox_id)).await.unwrap();
            let answer = solo.next_delivered(Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer.outbox_id, outbox_id);
        }
        inbox
            .wait_joins(Duration::from_secs(5), "bob", 2)
            .await
            .unwrap();
        let said = inbox
            .wait_for(Duration::from_secs(5), "the second", |e| {
                e.remote_id.as_str() == "echo2"
            })
            .await
            .unwrap();
        assert!(matches!(said.kind, EventKind::Join));
        assert_eq!(inbox.events().len(), 2);
        assert_eq!(inbox.messages("anything"), 0);
        solo.stop().await.unwrap();
    }
}
