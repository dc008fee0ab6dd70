//! The seam between the router and each network: what an adapter receives and what it sends
//! back.
//!
//! An adapter owns its network connection(s). It turns wire traffic into [`Inbound`] events
//! for the router, renders each [`Delivery`] the router hands it, and answers every delivery
//! with exactly one [`Delivered`]. Adapters never call each other or the router directly.

use crate::event::Event;
use crate::ids::{BridgeName, EventId, MessageId, NetworkId, RoomId, RoomRef, UserRef};
use crate::store::{AdapterStore, Pastes};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// An event from a network on its way to the router.
#[derive(Debug)]
pub struct Inbound {
    /// The normalised event. `event.origin` names the room as it is written in the link
    /// (config or runtime), not the network's internal id for it.
    pub event: Event,
    /// Answered once the event (and its outbox rows) are durable in the store, or with an
    /// error. Adapters whose protocol acknowledges receipt (Matrix transactions) wait on it.
    pub ack: Option<oneshot::Sender<Result<(), String>>>,
    /// Reaction keys the adapter cut from the same inbound item by a fan-out cap
    /// ([`crate::limits::reaction_keys`]); the gateway counts them in `/metrics`. Carried by
    /// the first event of the item, 0 on every other.
    pub capped_reactions: u64,
}

impl Inbound {
    /// An inbound event whose durability nobody waits for.
    pub fn new(event: Event) -> Self {
        Self {
            event,
            ack: None,
            capped_reactions: 0,
        }
    }

    /// An inbound event plus the receiver that resolves once it is durable.
    pub fn with_ack(event: Event) -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                event,
                ack: Some(tx),
                capped_reactions: 0,
            },
            rx,
        )
    }
}

/// One event to render into one target room. Stored in the durable outbox before it is handed
/// to the adapter; `outbox_id` is stable across restarts and usable as an idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The outbox row, increasing in delivery order per target network.
    pub outbox_id: u64,
    /// The bridge (link) this delivery belongs to.
    pub bridge: BridgeName,
    /// The room to render into, named as in the link.
    pub target: RoomRef,
    /// The event, as it arrived at its origin.
    pub event: Event,
    /// `reply_to` resolved into the target room's ids (empty when unknown there).
    pub reply_to: Vec<MessageId>,
    /// The edit/redact/react target resolved into the target room's ids (several when the
    /// original was split into parts; empty when unknown there).
    pub target_ids: Vec<MessageId>,
}

impl Delivery {
    /// The one answer to this delivery: the ids the target network gave what was rendered,
    /// or why it was given up.
    pub fn answer(&self, outcome: Result<Vec<MessageId>, String>) -> Delivered {
        Delivered {
            outbox_id: self.outbox_id,
            target: self.target.clone(),
            event: self.event.id.clone(),
            outcome,
        }
    }
}

/// The one answer to a [`Delivery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The outbox row answered.
    pub outbox_id: u64,
    /// The room it was rendered into.
    pub target: RoomRef,
    /// The event delivered.
    pub event: EventId,
    /// The ids the target network gave the rendered message(s), or why it was given up.
    /// Transient failures are not answered: the adapter keeps the delivery and retries.
    pub outcome: Result<Vec<MessageId>, String>,
}

/// Everything an adapter gets from the gateway when it starts.
#[derive(Debug)]
pub struct AdapterContext {
    /// The network instance this adapter serves.
    pub network: NetworkId,
    /// Events from the network to the router.
    pub inbound: mpsc::Sender<Inbound>,
    /// Deliveries from the router, in outbox order.
    pub deliveries: mpsc::Receiver<Delivery>,
    /// Answers to deliveries.
    pub delivered: mpsc::UnboundedSender<Delivered>,
    /// The rooms on this network that are currently linked; changes when admins link/unlink.
    pub rooms: watch::Receiver<Vec<RoomId>>,
    /// Cancelled when the gateway shuts down: finish the delivery at hand, part, return.
    pub shutdown: CancellationToken,
    /// Admin commands people send to the gateway's own identity on this network (a direct
    /// chat with the Matrix bot, a chat with the component JID, a private message to the IRC
    /// bot). The adapter sends the reply text back the same way.
    pub commands: mpsc::Sender<Command>,
    /// The adapter's view of its connection, for `/health`.
    pub status: watch::Sender<NetworkStatus>,
    /// How many puppets (IRC connections, MUC occupants, Matrix ghosts in rooms) the adapter
    /// has on its network right now, for `/metrics`.
    pub puppets: watch::Sender<usize>,
    /// The adapter's own part of the store (see [`crate::store`]).
    pub store: Arc<dyn AdapterStore>,
    /// Where the whole text of a message too long for this network can be kept and linked
    /// (`None` when the gateway serves no public pages).
    pub pastes: Option<Arc<dyn Pastes>>,
}

impl AdapterContext {
    /// A context wired to nothing but the given channels and store handle: commands go
    /// nowhere, status is only kept, there are no pastes. For tests and tools that run one
    /// adapter alone.
    pub fn standalone(
        store: Arc<dyn AdapterStore>,
        inbound: mpsc::Sender<Inbound>,
        deliveries: mpsc::Receiver<Delivery>,
        delivered: mpsc::UnboundedSender<Delivered>,
        rooms: watch::Receiver<Vec<RoomId>>,
        shutdown: CancellationToken,
    ) -> Self {
        let network = store.network().clone();
        let (commands, _) = mpsc::channel(1);
        let (status, _) = watch::channel(NetworkStatus::Connecting);
        let (puppets, _) = watch::channel(0);
        Self {
            network,
            inbound,
            deliveries,
            delivered,
            rooms,
            shutdown,
            commands,
            status,
            puppets,
            store,
            pastes: None,
        }
    }

    /// Sends a command line typed by someone on this network to the gateway and waits for
    /// the answer, at most [`COMMAND_TIMEOUT`]. `Err` carries the words to tell the sender
    /// when there is no answer. An empty answer means the command was ignored (its sender is
    /// over the rate limit): send nothing back.
    pub async fn ask(
        &self,
        from: Vec<UserRef>,
        display_name: String,
        text: String,
    ) -> Result<String, String> {
        ask(&self.commands, from, display_name, text).await
    }
}

/// How long an admin command may take before its sender is told there was no answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// [`AdapterContext::ask`] for a task that holds only a clone of the commands channel.
pub async fn ask(
    commands: &mpsc::Sender<Command>,
    from: Vec<UserRef>,
    display_name: String,
    text: String,
) -> Result<String, String> {
    let (reply, answer) = oneshot::channel();
    let command = Command {
        from,
        display_name,
        text,
        reply,
    };
    if commands.send(command).await.is_err() {
        return Err("The gateway does not take commands here.".to_owned());
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(_)) => Err("The gateway dropped the command.".to_owned()),
        Err(_) => Err("No answer from the gateway in time.".to_owned()),
    }
}

/// A command line typed to the gateway by someone on a network.
#[derive(Debug)]
pub struct Command {
    /// Every identity the network vouches for the sender with, most specific first: the
    /// Matrix user id; the XMPP bare JID; on IRC the services account (`irc:<net>`/account,
    /// when known) and the `nick!user@host` mask. Admin checks match against these, never a
    /// bare nick.
    pub from: Vec<UserRef>,
    /// The sender's display name, for replies and the audit log.
    pub display_name: String,
    /// The text as typed (`link lobby #room:server`, `ban irc:local/troll spam`...).
    pub text: String,
    /// Where the answer goes; the adapter sends it back to the sender.
    pub reply: oneshot::Sender<String>,
}

/// The state of one network as its adapter sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkStatus {
    /// Not connected yet (first connection in progress).
    Connecting,
    /// Connected and relaying.
    Connected,
    /// Relaying, but with a problem (some rooms not joined, reconnecting...).
    Degraded(String),
    /// Not relaying.
    Down(String),
}

/// Why an adapter stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Its configuration can not work (bad credentials, unknown room...).
    #[error("configuration: {0}")]
    Config(String),
    /// Something it could not recover from.
    #[error("{0}")]
    Fatal(String),
}

/// A network adapter. Each renders events in the closest native form its network has (and
/// its own fallbacks where there is none); the gateway runs any of them through
/// `junction_network::BoxAdapter`.
pub trait Adapter: Send + 'static {
    /// Runs until `cx.shutdown` is cancelled (then returns `Ok`) or a fatal error.
    /// Reconnects by itself on transient network failures.
    fn run(self, cx: AdapterContext) -> impl Future<Output = Result<(), AdapterError>> + Send;
}
