//! The router side of every adapter's channels, and the adapter side handed to each
//! adapter's `run`.

use junction_core::router::Router;
use junction_core::{
    AdapterContext, Command, Delivered, Delivery, Inbound, NetworkId, NetworkStatus, RoomId,
};
use junction_store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

/// The adapter ends of the channels for one network, created by [`Hub::attach`].
pub struct Attached {
    /// What to hand the adapter's `run`.
    pub context: AdapterContext,
}

/// The deliveries handed out to one adapter that it has not taken yet, in order: the
/// forwarder passes them on as the adapter takes them, and the outbox bounds can still take
/// them back (`Loop::bound_outbox`).
#[derive(Clone, Default)]
pub(super) struct Forward {
    queue: Arc<Mutex<VecDeque<Delivery>>>,
    ready: Arc<Notify>,
}

impl Forward {
    /// Queues a delivery for the adapter.
    pub(super) fn send(&self, d: Delivery) {
        self.lock().push_back(d);
        self.ready.notify_one();
    }

    /// The queue, for taking deliveries back.
    pub(super) fn lock(&self) -> MutexGuard<'_, VecDeque<Delivery>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The router side of every adapter's channels.
pub struct Hub {
    pub(super) inbound_tx: Option<mpsc::Sender<Inbound>>,
    pub(super) inbound_rx: mpsc::Receiver<Inbound>,
    delivered_tx: mpsc::UnboundedSender<Delivered>,
    pub(super) delivered_rx: mpsc::UnboundedReceiver<Delivered>,
    pub(super) outboxes: HashMap<NetworkId, Forward>,
    pub(super) rooms: HashMap<NetworkId, watch::Sender<Vec<RoomId>>>,
    commands_tx: mpsc::Sender<Command>,
    pub(super) commands_rx: mpsc::Receiver<Command>,
    pub(super) statuses: HashMap<NetworkId, watch::Receiver<NetworkStatus>>,
    pub(super) puppets: HashMap<NetworkId, watch::Receiver<usize>>,
    store: Arc<dyn Store>,
    pastes: Option<Arc<dyn junction_core::Pastes>>,
}

impl Hub {
    /// A hub with no adapters attached yet, handing each adapter its part of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let (delivered_tx, delivered_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::channel(64);
        Self {
            commands_tx,
            commands_rx,
            statuses: HashMap::new(),
            puppets: HashMap::new(),
            inbound_tx: Some(inbound_tx),
            inbound_rx,
            delivered_tx,
            delivered_rx,
            outboxes: HashMap::new(),
            rooms: HashMap::new(),
            store,
            pastes: None,
        }
    }

    /// Where adapters attached from now on keep the whole text of long messages.
    pub fn with_pastes(mut self, pastes: Arc<dyn junction_core::Pastes>) -> Self {
        self.pastes = Some(pastes);
        self
    }

    /// Creates the channels for one network's adapter. Deliveries reach the adapter through an
    /// unbounded forwarder so the router never waits on a slow adapter (which may itself be
    /// waiting to hand the router an inbound event); the durable outbox is the real queue.
    /// What waits in the forwarder can still be taken back (the outbox bounds).
    pub fn attach(
        &mut self,
        network: NetworkId,
        router: &Router,
        shutdown: &CancellationToken,
    ) -> Attached {
        let fwd = Forward::default();
        let (tx, rx) = mpsc::channel(64);
        let stop = shutdown.clone();
        let from = fwd.clone();
        tokio::spawn(async move {
            loop {
                let next = from.lock().pop_front();
                match next {
                    Some(d) => tokio::select! {
                        _ = stop.cancelled() => break,
                        sent = tx.send(d) => if sent.is_err() { break },
                    },
                    None => tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = from.ready.notified() => {}
                    },
                }
            }
        });
        let (rooms_tx, rooms_rx) = watch::channel(router.rooms_on(&network));
        self.outboxes.insert(network.clone(), fwd);
        self.rooms.insert(network.clone(), rooms_tx);
        let (status_tx, status_rx) = watch::channel(NetworkStatus::Connecting);
        self.statuses.insert(network.clone(), status_rx);
        let (puppets_tx, puppets_rx) = watch::channel(0);
        self.puppets.insert(network.clone(), puppets_rx);
        let store = junction_store::scoped(self.store.clone(), network.clone());
        Attached {
            context: AdapterContext {
                network,
                // After `route` started nothing new is attached; such a sender leads nowhere.
                inbound: match &self.inbound_tx {
                    Some(tx) => tx.clone(),
                    None => mpsc::channel(1).0,
                },
                deliveries: rx,
                delivered: self.delivered_tx.clone(),
                rooms: rooms_rx,
                shutdown: shutdown.clone(),
                commands: self.commands_tx.clone(),
                status: status_tx,
                puppets: puppets_tx,
                store,
                pastes: self.pastes.clone(),
            },
        }
    }
}
