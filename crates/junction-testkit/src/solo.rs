//! One adapter on its own, with the test standing in for the gateway.
//!
//! [`solo`] builds the channels an adapter gets from the gateway, a [`MemStore`]-backed
//! [`AdapterContext`] (through [`AdapterContext::standalone`], the store handle scoped to the
//! adapter's network), keeps the commands and status receivers, spawns `adapter.run(cx)` and
//! hands the test the gateway's ends: deliveries to send, answers and inbound events to read,
//! the linked rooms to change, and the shutdown token.

use junction_core::{
    Adapter, AdapterContext, AdapterError, Command, Delivered, Delivery, Inbound, NetworkId,
    NetworkStatus, RoomId,
};
use junction_store::{MemStore, Store};
use std::sync::Arc;
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
    use junction_core::{Event, EventKind, MessageId, RoomRef, Sender, UserRef};

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

    #[tokio::test]
    async fn the_test_holds_the_gateway_ends() {
        let mut solo = solo(Echo, NetworkId::new("echo"), vec![RoomId::new("#a")]);
        let status = solo
            .status
            .wait_for(|s| *s != NetworkStatus::Connecting)
            .await;
        assert_eq!(*status.unwrap(), NetworkStatus::Degraded("1 rooms".into()));
        let event = Event::new(
            RoomRef::new("irc:x", "#b"),
            MessageId::new("m1"),
            Sender::new(UserRef::new("irc:x", "bob"), "bob"),
            1,
            EventKind::Join,
        );
        solo.deliveries
            .send(Delivery {
                outbox_id: 7,
                bridge: "lobby".into(),
                target: RoomRef::new("echo", "#a"),
                event,
                reply_to: Vec::new(),
                target_ids: Vec::new(),
            })
            .await
            .unwrap();
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
}
