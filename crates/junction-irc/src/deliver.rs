//! Where each delivery goes and how the bot says it.
//!
//! Deliveries are routed in outbox order: to a puppet (messages, and the Join/Leave/nick
//! changes of a user who has one), or to the bot (relay mode, the gateway's own notices and
//! enforcement, summaries of kicks, topics, and whatever a puppet could not say). Puppets are
//! created lazily and connect in parallel, up to `max_puppets`; beyond that, or while a
//! user's puppet can not connect, their messages are relayed by the bot as `<alice[m]> text`.
//! Lines of one channel keep their order across connections: a delivery waits until every
//! earlier delivery of its channel that went to another connection is written.

use crate::adapter::{IrcAdapter, State};
use crate::config::IrcMode;
use crate::connection::Session;
use crate::fair::{Push, MAX_QUEUED_PER_CHANNEL};
use crate::inbound::Roster;
use crate::isupport::ISupport;
use crate::outbound::{self, Voice};
use crate::puppets::{Action, Job};
use crate::{ids, lookup};
use irc_proto::{Command, Response};
use junction_core::{AdapterContext, Delivery, EventKind, MessageId, UserRef};
use std::collections::HashSet;
use tokio::time::Instant;

/// How far down the waiting deliveries puppets are connected ahead of their turn.
pub(crate) const PREPARE_AHEAD: usize = 512;

/// How the bot renders a delivery.
#[derive(Debug, Clone)]
pub(crate) enum BotKind {
    /// As `<alice[m]> text` (relay mode, or a puppet that could not speak).
    Relay,
    /// In its own words (the gateway's notices, membership and kick summaries).
    Own,
    /// A gateway kick/ban of a user of this network.
    Enforce,
    /// Set the topic; a notice when the bot may not.
    Topic,
}

/// Where a delivery goes.
pub(crate) enum Plan {
    Bot(BotKind),
    Puppet(UserRef, Action),
    Answer(Result<Vec<MessageId>, String>),
}

/// A delivery being sent by the bot. It is answered only once the server answered a PING sent
/// after its last line: TCP keeps order, so the server then has every line (a write into a
/// connection the server already closed succeeds locally, so a sent line alone proves
/// nothing). If the connection drops before that, the whole delivery is sent again after
/// reconnect: a line may then appear twice, but none is lost.
pub(crate) struct Pending {
    pub(crate) delivery: Delivery,
    pub(crate) kind: BotKind,
    /// Counted in the channel gate until written.
    pub(crate) gated: bool,
    /// Rendered once connected (the nick and line length are needed).
    pub(crate) lines: Vec<String>,
    /// Lines of the message itself (their ids answer the delivery).
    pub(crate) said: usize,
    /// The nick shown as the sender, for quotes.
    pub(crate) shown: String,
    pub(crate) sent: usize,
    pub(crate) ping_sent: bool,
    /// Sent instead when the server refuses `lines` (a topic the bot may not set).
    pub(crate) fallback: Vec<String>,
    /// A refusal from the server before the PING's answer (enforcement fails).
    pub(crate) denied: Option<String>,
}

impl Pending {
    pub(crate) fn token(&self) -> String {
        format!("junction-{}", self.delivery.outbox_id)
    }
}

impl IrcAdapter {
    /// Decides where a delivery goes.
    pub(crate) fn plan(&self, cx: &AdapterContext, st: &State, d: &Delivery) -> Plan {
        let sender = &d.event.sender.user;
        let has_puppet = |u: &UserRef| st.puppets.contains_key(u);
        if sender.network.is_gateway() {
            return match &d.event.kind {
                EventKind::Kick { target, reason } | EventKind::Ban { target, reason } => {
                    if target.user.network == cx.network {
                        Plan::Bot(BotKind::Enforce)
                    } else if has_puppet(&target.user) {
                        Plan::Puppet(target.user.clone(), Action::Part(reason.clone()))
                    } else {
                        Plan::Answer(Ok(Vec::new()))
                    }
                }
                _ => Plan::Bot(BotKind::Own),
            };
        }
        let puppet_mode = self.config.mode == IrcMode::Puppet;
        let live = puppet_mode && has_puppet(sender);
        match &d.event.kind {
            EventKind::Redact { .. } | EventKind::Unreact { .. } => Plan::Answer(Ok(Vec::new())),
            EventKind::Message(_) | EventKind::Edit { .. } | EventKind::React { .. } => {
                let may_create = puppet_mode
                    && st.puppets.len() < self.config.max_puppets
                    && st.cooldown.get(sender).is_none_or(|t| *t <= Instant::now());
                if live || may_create {
                    Plan::Puppet(sender.clone(), Action::Speak)
                } else {
                    if puppet_mode {
                        tracing::debug!(network = %cx.network, user = %sender, puppets = st.puppets.len(), "IRC puppet not available; relayed by the bot");
                    }
                    Plan::Bot(BotKind::Relay)
                }
            }
            EventKind::Join if live => Plan::Puppet(sender.clone(), Action::Join),
            EventKind::Leave { reason, quit } if live => Plan::Puppet(
                sender.clone(),
                if *quit {
                    Action::Quit(reason.clone())
                } else {
                    Action::Part(reason.clone())
                },
            ),
            EventKind::NickChange { new_name } if live => {
                Plan::Puppet(sender.clone(), Action::Nick(new_name.clone()))
            }
            // The bot sets the topic with its own operator status only for a moderator of
            // the origin room; anyone else's topic becomes a line saying who set what.
            EventKind::Topic { .. } if d.event.by_moderator => Plan::Bot(BotKind::Topic),
            _ => Plan::Bot(BotKind::Own),
        }
    }

    /// Routes held deliveries as far as channel order allows.
    pub(crate) fn pump(&self, cx: &AdapterContext, st: &mut State, isupport: &ISupport) {
        if !st.ready {
            return;
        }
        let mut blocked: HashSet<String> = HashSet::new();
        let mut i = 0;
        while i < st.held.len() {
            let chan = isupport.fold(&st.held[i].target.room.0);
            if blocked.contains(&chan) {
                // Lines in this channel keep their order, but the puppets of the people
                // waiting connect meanwhile, all at once (registration takes about a second
                // on some servers; one at a time would make a burst of new speakers crawl).
                if i < PREPARE_AHEAD {
                    if let Plan::Puppet(u, Action::Speak) = self.plan(cx, st, &st.held[i]) {
                        if u == st.held[i].event.sender.user {
                            let sender = st.held[i].event.sender.clone();
                            self.ensure_puppet(cx, st, &sender, isupport);
                        }
                    }
                }
                i += 1;
                continue;
            }
            let plan = self.plan(cx, st, &st.held[i]);
            let key = match &plan {
                Plan::Bot(_) => Some(None),
                Plan::Puppet(u, _) => Some(Some(u.clone())),
                Plan::Answer(_) => None,
            };
            let free = match (&key, st.unwritten.get(&chan)) {
                (None, _) | (_, None) => true,
                (Some(k), Some((owner, _))) => k == owner,
            };
            if !free {
                // Let its puppet connect meanwhile, in parallel with the others.
                if let Plan::Puppet(u, Action::Speak) = &plan {
                    if u == &st.held[i].event.sender.user {
                        let sender = st.held[i].event.sender.clone();
                        self.ensure_puppet(cx, st, &sender, isupport);
                    }
                }
                blocked.insert(chan);
                i += 1;
                continue;
            }
            let Some(d) = st.held.remove(i) else { break };
            if let Some(k) = key {
                let e = st.unwritten.entry(chan).or_insert((k, 0));
                e.1 += 1;
            }
            match plan {
                Plan::Answer(outcome) => answer(cx, &d, outcome),
                Plan::Bot(kind) => queue_bot(cx, st, isupport, (d, kind, true)),
                Plan::Puppet(user, action) => {
                    let job = Job {
                        delivery: d,
                        action,
                    };
                    self.to_puppet(cx, st, isupport, user, job);
                }
            }
        }
    }

    /// Renders a delivery for the bot.
    pub(crate) fn bot_pending(
        &self,
        cx: &AdapterContext,
        s: &Session,
        roster: &Roster,
        (d, kind, gated): (Delivery, BotKind, bool),
    ) -> Pending {
        let mut fallback = Vec::new();
        let mut shown = s.nick.clone();
        let lines = match &kind {
            BotKind::Enforce => {
                let hosts = &roster.hosts;
                let isupport = &s.isupport;
                outbound::enforcement(&d, &cx.network, &|n| hosts.get(&isupport.fold(n)).cloned())
                    .unwrap_or_default()
            }
            BotKind::Topic => {
                fallback = self.render(cx, s, &d, None);
                match &d.event.kind {
                    EventKind::Topic { text } => {
                        let text = outbound::snippet(text);
                        vec![format!(
                            "TOPIC {} :{}",
                            d.target.room.0,
                            text.trim_end_matches('…')
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            BotKind::Own => self.render(cx, s, &d, None),
            BotKind::Relay => {
                shown = ids::puppet_nick(cx.store.as_ref(), &d.event.sender, s.isupport.nicklen);
                self.render(cx, s, &d, Some(&shown))
            }
        };
        let said = match kind {
            BotKind::Relay | BotKind::Own => lines.len(),
            _ => 0,
        };
        Pending {
            delivery: d,
            kind,
            gated,
            lines,
            said,
            shown,
            sent: 0,
            ping_sent: false,
            fallback,
            denied: None,
        }
    }

    pub(crate) fn render(
        &self,
        cx: &AdapterContext,
        s: &Session,
        d: &Delivery,
        relay_as: Option<&str>,
    ) -> Vec<String> {
        self.render_as(cx, s, d, &s.nick, relay_as)
    }

    /// Renders a delivery as the connection with nick `sender_nick` says it (the bot, or a
    /// puppet: the line budget depends on the nick).
    pub(crate) fn render_as(
        &self,
        cx: &AdapterContext,
        s: &Session,
        d: &Delivery,
        sender_nick: &str,
        relay_as: Option<&str>,
    ) -> Vec<String> {
        let voice = Voice {
            nick: sender_nick,
            relay_as,
            linelen: s.isupport.linelen,
            max_lines: self.config.max_lines,
        };
        outbound::render_for(cx.store.as_ref(), cx.pastes.as_deref(), d, voice)
    }

    /// Answers a bot delivery whose lines are proven sent.
    pub(crate) fn finish(&self, cx: &AdapterContext, p: Pending) {
        self.answer_said(cx, &p.delivery, p.said, &p.shown, p.denied);
    }

    /// Answers a delivery whose `said` lines are on IRC under `shown` (or refused: `denied`),
    /// and remembers its words for quotes.
    pub(crate) fn answer_said(
        &self,
        cx: &AdapterContext,
        d: &Delivery,
        said: usize,
        shown: &str,
        denied: Option<String>,
    ) {
        let outcome = match denied {
            Some(why) => Err(why),
            None => Ok((0..said)
                .map(|i| MessageId::new(format!("{}.{i}", d.outbox_id)))
                .collect::<Vec<_>>()),
        };
        if let (Ok(ids), Some(text)) = (&outcome, lookup::quotable(d)) {
            if let Some(first) = ids.first() {
                lookup::remember(cx.store.as_ref(), &d.target, first, shown, &text);
            }
        }
        answer(cx, d, outcome);
    }
}

/// One delivery of `channel` routed to `owner` is written: the gate opens when none is left.
pub(crate) fn written(st: &mut State, isupport: &ISupport, channel: &str, owner: &Option<UserRef>) {
    let chan = isupport.fold(channel);
    if let Some((o, n)) = st.unwritten.get_mut(&chan) {
        if o == owner {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.unwritten.remove(&chan);
            }
        }
    }
}

/// Queues a delivery for the bot. What people said is refused past the channel's bound
/// ([`MAX_QUEUED_PER_CHANNEL`]) and given up (the gateway counts it as failed), logged once
/// per burst; the gateway's own words, enforcement and topics are always queued.
pub(crate) fn queue_bot(
    cx: &AdapterContext,
    st: &mut State,
    isupport: &ISupport,
    item: (Delivery, BotKind, bool),
) {
    let channel = isupport.fold(&item.0.target.room.0);
    let bounded = !item.0.event.sender.user.network.is_gateway()
        && matches!(item.1, BotKind::Relay | BotKind::Own);
    if !bounded {
        st.bot_queue.push_always(&channel, item);
        return;
    }
    match st.bot_queue.push(&channel, item) {
        Push::Queued => {}
        Push::QueuedAfter(refused) => {
            tracing::info!(network = %cx.network, channel = %channel, refused, "The bot's queue for an IRC channel has room again.");
        }
        Push::Full {
            item: (d, _, gated),
            first,
        } => {
            if first {
                tracing::warn!(network = %cx.network, channel = %channel, queued = MAX_QUEUED_PER_CHANNEL, "The bot's queue for an IRC channel is full: lines for it are given up until it drains.");
            }
            if gated {
                written(st, isupport, &d.target.room.0, &None);
            }
            answer(
                cx,
                &d,
                Err(format!(
                    "the IRC bot's queue for {channel} is full ({MAX_QUEUED_PER_CHANNEL} waiting)"
                )),
            );
        }
    }
}

/// Gives the one answer to `d`.
pub(crate) fn answer(cx: &AdapterContext, d: &Delivery, outcome: Result<Vec<MessageId>, String>) {
    let _ = cx.delivered.send(d.answer(outcome));
}

/// The server refusing a KICK/MODE/TOPIC the bot sent: not an operator, no such nick...
pub(crate) fn refusal(msg: &irc_proto::Message) -> Option<String> {
    let Command::Response(r, args) = &msg.command else {
        return None;
    };
    let why = args.last().cloned().unwrap_or_default();
    match r {
        Response::ERR_CHANOPRIVSNEEDED => {
            Some(format!("the IRC bot is not a channel operator ({why})"))
        }
        Response::ERR_NOSUCHNICK | Response::ERR_USERNOTINCHANNEL | Response::ERR_NOTONCHANNEL => {
            Some(format!("not possible on IRC: {why}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::fake_server::{answered, delivery, expect_line, joined, started};
    use crate::IrcMode;
    use junction_core::{EventKind, NetworkId, Sender, UserRef};

    #[tokio::test]
    async fn gateway_kicks_are_carried_out_and_fail_without_op() {
        let (listener, mut h) = started(IrcMode::Puppet).await;
        let mut lines = joined(&listener, |line| {
            if line.starts_with("KICK #t troll") {
                vec![":fake 482 junction #t :You're not a channel operator".to_owned()]
            } else {
                Vec::new()
            }
        })
        .await;
        let mut d = delivery(5, "");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        d.event.kind = EventKind::Ban {
            target: Sender::new(UserRef::new("irc:fake", "troll!~t@bad.test"), "troll"),
            reason: Some("spam".into()),
        };
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "MODE #t +b *!*@bad.test").await;
        expect_line(&mut lines, "KICK #t troll :spam").await;
        let ok = answered(&mut h).await;
        assert!(
            matches!(&ok.outcome, Err(why) if why.contains("operator")),
            "{ok:?}"
        );
        // A notice from the gateway is said by the bot itself, without a relay prefix.
        let mut d = delivery(6, "maintenance at noon");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :maintenance at noon").await;
        h.shutdown.cancel();
    }
}
