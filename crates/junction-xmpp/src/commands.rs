//! Admin commands typed on XMPP: a chat to the component (or the listener) is a command
//! line, answered by a chat; a XEP-0050 ad-hoc command ([`crate::adhoc`]) is one line built
//! from its form, answered by its completed form. Both go to the gateway through
//! [`junction_core::adapter::ask`], in a task of their own, and their answers come back to
//! the run loop to be sent.

use std::time::Instant;

use junction_core::{AdapterContext, UserRef};
use minidom::Element;
use tokio::sync::mpsc;

use crate::adapter::State;
use crate::outbound;
use crate::rooms::linked_rooms;

/// A reply to an admin command (a chat message or an ad-hoc command's answer), to send
/// when the gateway has answered.
pub(crate) type Reply = Element;

/// A person wrote to the gateway: the text goes to the gateway as a command,
/// and its answer comes back as a chat message from the address written to (none when
/// the gateway ignored the command: an empty answer).
pub(crate) fn command(
    st: &mut State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    dm: crate::inbound::DirectMessage,
) {
    let id = st.new_id();
    let (from, to) = (dm.from, dm.to);
    run_command(st, cx, replies, &dm.bare, dm.body, move |answer| {
        let text = match answer {
            Ok(t) if t.trim().is_empty() => return None,
            Ok(t) | Err(t) => t,
        };
        Some(outbound::chat(&to, &from, &id, &text))
    });
}

/// Sends `text` to the gateway as a command from `bare` (the sender's bare JID, the
/// identity the network vouches for) and waits, in a task of its own, for the answer:
/// `finish` turns it (Err when the gateway could not be asked or did not answer in time)
/// into the stanza to send back, if any.
fn run_command(
    st: &State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    bare: &str,
    text: String,
    finish: impl FnOnce(Result<String, String>) -> Option<Element> + Send + 'static,
) {
    let name = bare.split('@').next().unwrap_or(bare).to_string();
    let from = vec![UserRef::new(st.network.as_str(), bare.to_string())];
    tracing::info!(from = %bare, "xmpp: a command for the gateway");
    let (commands, replies) = (cx.commands.clone(), replies.clone());
    tokio::spawn(async move {
        let answer = junction_core::adapter::ask(&commands, from, name, text).await;
        if let Some(reply) = finish(answer) {
            let _ = replies.send(reply);
        }
    });
}

/// A XEP-0050 request: answered at once (a form, a cancel, an error), or sent to the
/// gateway as the command line it stands for and answered with the gateway's reply.
pub(crate) fn adhoc_command(
    st: &mut State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
    req: &crate::adhoc::Request,
) -> Option<Element> {
    use crate::adhoc::{completed, error_iq, result_iq, Refusal, Step};
    let from = el.attr("from").unwrap_or_default();
    let rooms = linked_rooms(cx);
    let Some(bare) = crate::inbound::person(from, &st.config.component, &rooms) else {
        return Some(error_iq(el, Refusal::FORBIDDEN));
    };
    match st.adhoc.step(req, from, Instant::now()) {
        Step::Answer(c) => Some(result_iq(el, c)),
        Step::Refuse(r) => Some(error_iq(el, r)),
        Step::Run {
            text,
            node,
            sessionid,
        } => {
            let request = el.clone();
            run_command(st, cx, replies, &bare, text, move |answer| {
                let (text, ok) = match answer {
                    Ok(t) => (t, true),
                    Err(t) => (t, false),
                };
                Some(result_iq(&request, completed(&node, &sessionid, &text, ok)))
            });
            None
        }
    }
}
