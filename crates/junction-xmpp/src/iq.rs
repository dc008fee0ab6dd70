//! IQs: every get or set addressed to the component, the listener or a puppet gets an
//! answer (ping, disco#info and disco#items, ad-hoc commands); results and errors of the
//! IQs we sent are matched to what asked them (server pings, self-pings, archive queries,
//! disco#info of rooms, admin and moderation requests).

use junction_core::AdapterContext;
use minidom::Element;
use tokio::sync::mpsc;

use crate::adapter::{State, LISTENER_NICK};
use crate::commands::Reply;
use crate::connection::{send, Conn};
use crate::inbound::{error_condition, offered_moderation, self_ping_result, SelfPing};
use crate::outbound;
use crate::pending::Wait;

/// Sets an unqualified attribute; names here are constant valid XML names.
fn set(el: &mut Element, name: &str, value: impl Into<String>) {
    if let Ok(n) = rxml::NcName::try_from(name) {
        el.set_attr(rxml::Namespace::NONE, n, value.into());
    }
}

/// An IQ result or error: a server ping, a self-ping, an archive query's end,
/// or the answer to an admin/moderation request.
pub(crate) async fn on_iq_answer(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    el: &Element,
) -> bool {
    let Some(id) = el.attr("id") else { return true };
    if st.server_ping.as_deref() == Some(id) {
        st.server_ping = None;
        st.missed_pings = 0;
        return true;
    }
    if let Some((room, who)) = st.pings.remove(id) {
        if self_ping_result(el) == SelfPing::Gone {
            tracing::info!(
                room,
                "xmpp: a self-ping says we left the room; joining again"
            );
            let jid = st.new_id();
            let join = match who {
                None => {
                    st.listening.remove(&room);
                    outbound::join(&st.listener(), &room, LISTENER_NICK, &jid)
                }
                Some(p) => {
                    let Some(nick) = st.joined.get(&(room.clone(), p.clone())).cloned() else {
                        return true;
                    };
                    outbound::join(&format!("{p}/junction"), &room, &nick, &jid)
                }
            };
            return send(conn, join).await;
        }
        return true;
    }
    if let Some(q) = st.mam.remove(id) {
        return crate::backfill::on_mam_end(st, conn, q, el).await;
    }
    if let Some(room) = st.disco.remove(id) {
        if el.attr("type") == Some("result") {
            let form = offered_moderation(el);
            tracing::debug!(room, ?form, "xmpp: the room's message moderation");
            st.moderation.insert(room, form);
        } else {
            // Not known: the moderation request keeps its current form, and the next join
            // asks again.
            tracing::debug!(room, "xmpp: the room did not answer disco#info");
        }
        return true;
    }
    if st.pending.get(id).is_some_and(|p| p.wait == Wait::Iq) {
        let room = st
            .pending
            .get(id)
            .map(|p| p.room.clone())
            .unwrap_or_default();
        let outcome = if el.attr("type") == Some("result") {
            Ok(Vec::new())
        } else {
            let cond = error_condition(el).unwrap_or_else(|| "error".into());
            Err(format!("{room} refused: {cond}"))
        };
        crate::pending::answer(st, cx, id, outcome);
    }
    true
}

/// Every IQ get/set gets an answer: ping → result, disco#info → identity and
/// features, disco#items → the ad-hoc commands (on their node), an ad-hoc
/// command → its form or its outcome (later, once the gateway answered),
/// anything else → service-unavailable.
pub(crate) async fn answer_iq(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
) -> bool {
    use crate::adhoc::{NS_COMMANDS, NS_DISCO_INFO, NS_DISCO_ITEMS};
    let ty = el.attr("type").unwrap_or_default();
    if ty != "get" && ty != "set" {
        return true;
    }
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return true;
    };
    // The gateway's own addresses (the component and the listener) take commands;
    // puppets do not.
    let to_bare = to.split('/').next().unwrap_or(to);
    let gateway = to_bare.eq_ignore_ascii_case(&st.config.component)
        || to_bare.eq_ignore_ascii_case(&st.listener_bare());
    if gateway {
        if let Some(req) = crate::adhoc::parse_request(el) {
            return match crate::commands::adhoc_command(st, cx, replies, el, &req) {
                Some(answer) => send(conn, answer).await,
                None => true,
            };
        }
    }
    let id = el.attr("id").unwrap_or_default().to_string();
    let ns = crate::inbound::NS_CLIENT;
    let mut reply = Element::builder("iq", ns).build();
    let mut refuse = None;
    if el.has_child("ping", "urn:xmpp:ping") {
        // result, no payload
    } else if let Some(q) = el.get_child("query", NS_DISCO_INFO) {
        let node = q.attr("node");
        if let Some(info) = node.filter(|_| gateway).and_then(crate::adhoc::node_info) {
            reply.append_child(info);
        } else {
            let mut query = Element::builder("query", NS_DISCO_INFO).build();
            let (cat, kind) = if to.contains('@') {
                ("client", "bot")
            } else {
                ("gateway", "xmpp")
            };
            let mut ident = Element::builder("identity", NS_DISCO_INFO).build();
            set(&mut ident, "category", cat);
            set(&mut ident, "type", kind);
            set(&mut ident, "name", "Junction");
            query.append_child(ident);
            let commands = gateway.then_some(NS_COMMANDS);
            for f in [
                NS_DISCO_INFO,
                "urn:xmpp:ping",
                "urn:xmpp:message-correct:0",
                "urn:xmpp:message-retract:1",
                "urn:xmpp:reactions:0",
                "urn:xmpp:reply:0",
            ]
            .into_iter()
            .chain(commands)
            {
                let mut fe = Element::builder("feature", NS_DISCO_INFO).build();
                set(&mut fe, "var", f);
                query.append_child(fe);
            }
            if let Some(node) = node {
                set(&mut query, "node", node.to_string());
            }
            reply.append_child(query);
        }
    } else if let Some(q) = el.get_child("query", NS_DISCO_ITEMS) {
        match q.attr("node") {
            Some(NS_COMMANDS) if gateway => {
                reply.append_child(crate::adhoc::command_items(to));
            }
            None => {
                reply.append_child(Element::builder("query", NS_DISCO_ITEMS).build());
            }
            Some(_) => refuse = Some(("cancel", "item-not-found")),
        }
    } else {
        refuse = Some(("cancel", "service-unavailable"));
    }
    if let Some((kind, condition)) = refuse {
        let mut error = Element::builder("error", ns).build();
        set(&mut error, "type", kind);
        error.append_child(
            Element::builder(condition, "urn:ietf:params:xml:ns:xmpp-stanzas").build(),
        );
        set(&mut reply, "type", "error");
        reply.append_child(error);
    }
    if reply.attr("type").is_none() {
        set(&mut reply, "type", "result");
    }
    set(&mut reply, "id", id);
    set(&mut reply, "from", to.to_string());
    set(&mut reply, "to", from.to_string());
    send(conn, reply).await
}
