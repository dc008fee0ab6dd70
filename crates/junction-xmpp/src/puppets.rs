//! The occupants we make join: one puppet per remote person and room, joined the first time
//! they have something to show there, under a nick of their own (`alice[m]`, working around
//! conflicts), at most `[xmpp] max_occupants` of them, leaving when idle.

use junction_core::clock::now_ms;
use junction_core::{Admit, Delivery, EventKind, NetworkId};
use minidom::Element;

use crate::adapter::{State, LISTENER_NICK};
use crate::connection::{send, Conn};
use crate::outbound;

/// Most nick conflicts a puppet works around before it gives up on a room.
const MAX_NICK_ATTEMPTS: u32 = 10;

impl State {
    /// Whether `nick` in `room` is the listener or one of our puppets.
    pub fn is_our_nick(&self, room: &str, nick: &str) -> bool {
        nick == LISTENER_NICK
            || self
                .joined
                .iter()
                .any(|((r, _), n)| r.eq_ignore_ascii_case(room) && n == nick)
    }
}

/// Takes a slot of the occupant cap for the puppet `key` before it joins: Some(true) when it
/// may join (a puppet making way has left first), Some(false) when refused (counted), None
/// when the connection was lost.
pub(crate) async fn admit_occupant(
    st: &mut State,
    conn: &mut Conn,
    key: &(String, String),
    d: &Delivery,
) -> Option<bool> {
    // A slot the puppet still holds without being in the room (kicked, no free nick) is
    // taken anew.
    st.cap.remove(key);
    let speaks = !matches!(d.event.kind, EventKind::Join);
    match st.cap.admit(key, now_ms(), speaks) {
        Admit::Present | Admit::Free => Some(true),
        Admit::Evict(old) => {
            tracing::info!(room = %old.0, puppet = %old.1, "xmpp: the cap of occupants is reached; the least recently active puppet leaves");
            if let Some(nick) = st.joined.remove(&old) {
                let from = format!("{}/junction", old.1);
                if !send(conn, outbound::leave(&from, &old.0, &nick, None)).await {
                    return None;
                }
            }
            Some(true)
        }
        Admit::Refused => {
            st.cap_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if st.cap.warn_now(now_ms()) {
                tracing::warn!(max_occupants = st.cap.limits().max, "xmpp: the cap of puppet occupants is reached: a newcomer gets no occupant (their messages are said by the gateway's own occupant). Further refusals are counted in /metrics only.");
            } else {
                tracing::debug!(room = %key.0, puppet = %key.1, "xmpp: no occupant: the cap is reached");
            }
            Some(false)
        }
    }
}

/// Puppets idle for the idle timeout leave their rooms. False when the connection is lost.
pub(crate) async fn leave_idle(st: &mut State, conn: &mut Conn) -> bool {
    for key in st.cap.take_idle(now_ms()) {
        let Some(nick) = st.joined.remove(&key) else {
            continue;
        };
        tracing::info!(room = %key.0, puppet = %key.1, "xmpp: an idle puppet leaves");
        let from = format!("{}/junction", key.1);
        if !send(conn, outbound::leave(&from, &key.0, &nick, None)).await {
            return false;
        }
    }
    true
}

/// The letter of the origin mark (`m`, `i`) of the network a puppet (bare JID) stands for.
pub(crate) fn origin_tag(st: &State, puppet: &str) -> &'static str {
    let network = crate::ids::parse_puppet(puppet, &st.config.component)
        .map(|p| p.network)
        .unwrap_or_default();
    NetworkId::new(network)
        .origin_mark()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Presence addressed to one of our puppets: a 409 nick conflict makes it
/// retry with the next nick (`nick[m]`, `nick[m]2`...; see [`outbound::puppet_nick`]); its own unavailable presence (kick,
/// ban, room gone) marks it not joined, so the next delivery joins again.
pub(crate) async fn on_puppet_presence(st: &mut State, conn: &mut Conn, el: &Element) -> bool {
    let (Some(to), Some(from)) = (el.attr("to"), el.attr("from")) else {
        return true;
    };
    let Some((room, nick)) = from.split_once('/') else {
        return true;
    };
    let puppet = to.split('/').next().unwrap_or(to).to_string();
    let key = (room.to_string(), puppet.clone());
    if st.joined.get(&key).map(String::as_str) != Some(nick) {
        return true;
    }
    match el.attr("type") {
        Some("error") => {
            let conflict = el
                .get_child("error", crate::inbound::NS_CLIENT)
                .is_some_and(|e| e.has_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas"));
            st.joined.remove(&key);
            if !conflict {
                tracing::warn!(room, "xmpp: a puppet could not join");
                return true;
            }
            let Some((wanted, attempt)) = st.wanted.get(&key).cloned() else {
                return true;
            };
            if attempt + 1 > MAX_NICK_ATTEMPTS {
                tracing::warn!(room, "xmpp: no free nick for a puppet");
                return true;
            }
            let next = outbound::puppet_nick(
                &wanted,
                origin_tag(st, &puppet),
                attempt + 1,
                st.config.origin_marks,
            );
            st.wanted.insert(key.clone(), (wanted, attempt + 1));
            st.joined.insert(key, next.clone());
            let id = st.new_id();
            send(
                conn,
                outbound::join(&format!("{puppet}/junction"), room, &next, &id),
            )
            .await
        }
        Some("unavailable") => {
            let own = el
                .children()
                .filter(|x| x.name() == "x")
                .flat_map(|x| x.children())
                .any(|c| c.name() == "status" && c.attr("code") == Some("110"));
            if own {
                tracing::info!(room, "xmpp: a puppet left or was removed from the room");
                st.joined.remove(&key);
            }
            true
        }
        _ => true,
    }
}
