//! XEP-0050 ad-hoc commands through the whole gateway on the real servers: an XMPP client
//! lists the admin commands on the component's JID, runs `status` (an admin gets the answer,
//! a stranger the refusal), links a channel in two steps (form, then submission), cancels a
//! form, and is refused for an unknown node or a stale session.

use crate::admin::matrix_announcement;
use crate::lobby::{short_nick, Lobby};
use anyhow::Context as _;
use junction_testkit::clients::irc::is_join_of;
use junction_testkit::clients::XmppUser;
use junction_testkit::servers::servers;
use junction_testkit::unique;
use minidom::Element;
use std::time::Duration;

/// How long any one thing may take in these tests.
const WAIT: Duration = Duration::from_secs(60);

const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Sends an IQ of type `ty` with `payload` to `to` as `user`; waits for its answer.
async fn iq(user: &XmppUser, to: &str, ty: &str, payload: &str) -> anyhow::Result<Element> {
    let id = user.next_id();
    user.send_raw(&format!(
        "<iq type='{ty}' to='{to}' id='{id}'>{payload}</iq>"
    ))?;
    user.wait_for(WAIT, |e| {
        e.name() == "iq"
            && e.attr("id") == Some(id.as_str())
            && matches!(e.attr("type"), Some("result" | "error"))
    })
    .await
    .with_context(|| format!("the answer to {payload}"))
}

/// The `<command/>` of a result, or an error naming what came instead.
fn command(answer: &Element) -> anyhow::Result<&Element> {
    answer
        .children()
        .find(|c| c.is("command", NS_COMMANDS))
        .with_context(|| format!("no command in {}", String::from(answer)))
}

/// The text of a completed command's notes.
fn notes(c: &Element) -> String {
    c.children()
        .filter(|n| n.is("note", NS_COMMANDS))
        .map(Element::text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a command node that takes no arguments and returns its completed `<command/>`.
async fn execute(user: &XmppUser, component: &str, node: &str) -> anyhow::Result<Element> {
    let answer = iq(
        user,
        component,
        "set",
        &format!("<command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/>"),
    )
    .await?;
    Ok(command(&answer)?.clone())
}

/// The stanza error condition of an error answer.
fn error_conditions(answer: &Element) -> Vec<String> {
    answer
        .children()
        .filter(|c| c.name() == "error")
        .flat_map(|e| e.children())
        .map(|c| c.name().to_owned())
        .collect()
}

/// An admin and a stranger use the ad-hoc commands from their XMPP clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_clients_list_and_run_the_admin_commands() -> anyhow::Result<()> {
    let s = servers().await?;
    let admin =
        XmppUser::register(s, &short_nick(&unique("adhoc")).to_lowercase(), "pw-admin").await?;
    let admins = format!("admins = [\"{}\"]\n", admin.bare_jid());
    let lobby = Lobby::start_with(move |config| {
        *config = config.replacen("[gateway]\n", &format!("[gateway]\n{admins}"), 1);
    })
    .await?;
    let component = lobby.slot.component.clone();

    // Discovery: the component says it has commands, and lists one per verb.
    let info = iq(
        &admin,
        &component,
        "get",
        &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
    )
    .await?;
    let features: Vec<&str> = info
        .children()
        .flat_map(|q| q.children())
        .filter(|f| f.is("feature", NS_DISCO_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(features.contains(&NS_COMMANDS), "{features:?}");
    let items = iq(
        &admin,
        &component,
        "get",
        &format!("<query xmlns='{NS_DISCO_ITEMS}' node='{NS_COMMANDS}'/>"),
    )
    .await?;
    let query = items
        .get_child("query", NS_DISCO_ITEMS)
        .with_context(|| String::from(&items))?;
    assert_eq!(query.attr("node"), Some(NS_COMMANDS));
    let nodes: Vec<&str> = query.children().filter_map(|i| i.attr("node")).collect();
    assert_eq!(
        nodes,
        ["help", "bridges", "status", "link", "unlink", "close", "kick", "ban", "unban"]
    );
    assert!(query
        .children()
        .all(|i| i.attr("jid") == Some(component.as_str()) && i.attr("name").is_some()));

    // `status` runs at once: the admin gets the gateway's answer...
    let done = execute(&admin, &component, "status").await?;
    assert_eq!(
        done.attr("status"),
        Some("completed"),
        "{}",
        String::from(&done)
    );
    let text = notes(&done);
    assert!(text.contains("Bridges: 1"), "{text}");
    // ...and someone who is no admin the refusal.
    let refused = execute(&lobby.xmpp, &component, "status").await?;
    assert_eq!(refused.attr("status"), Some("completed"));
    let text = notes(&refused);
    assert!(text.contains("Refused"), "{text}");

    // `link` takes two steps: a form, then the filled form.
    let chan = format!("#{}", unique("adh"));
    lobby.irc.join(&chan).await?;
    let first = execute(&admin, &component, "link").await?;
    assert_eq!(
        first.attr("status"),
        Some("executing"),
        "{}",
        String::from(&first)
    );
    let sid = first.attr("sessionid").context("a session id")?.to_owned();
    let form = first.get_child("x", NS_DATA).context("a data form")?;
    assert_eq!(form.attr("type"), Some("form"));
    let fields: Vec<&str> = form
        .children()
        .filter(|f| f.is("field", NS_DATA))
        .filter_map(|f| f.attr("var"))
        .collect();
    assert_eq!(fields, ["bridge", "room"]);
    let answer = iq(
        &admin,
        &component,
        "set",
        &format!(
            "<command xmlns='{NS_COMMANDS}' node='link' sessionid='{sid}' action='complete'>\
               <x xmlns='{NS_DATA}' type='submit'>\
                 <field var='bridge'><value>lobby</value></field>\
                 <field var='room'><value>local/{chan}</value></field>\
               </x></command>"
        ),
    )
    .await?;
    let done = command(&answer)?;
    assert_eq!(done.attr("status"), Some("completed"));
    assert_eq!(done.attr("sessionid"), Some(sid.as_str()));
    let text = notes(done);
    assert!(text.contains("Linked") && text.contains(&chan), "{text}");
    // It took effect: the IRC bot joins the channel and the lobby hears about it.
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    lobby
        .irc
        .wait_for(WAIT, |m| is_join_of(m, &chan, &bot))
        .await
        .context("the bot joins the channel linked by the ad-hoc command")?;
    matrix_announcement(&lobby, &format!("linked irc:local/{chan}"))
        .await
        .context("the link is announced in the Matrix room")?;

    // A form can be cancelled; its session is then gone.
    let ban = execute(&admin, &component, "ban").await?;
    let sid = ban.attr("sessionid").context("a session id")?.to_owned();
    let cancel =
        format!("<command xmlns='{NS_COMMANDS}' node='ban' sessionid='{sid}' action='cancel'/>");
    let answer = iq(&admin, &component, "set", &cancel).await?;
    assert_eq!(command(&answer)?.attr("status"), Some("canceled"));
    let stale = iq(&admin, &component, "set", &cancel).await?;
    assert_eq!(stale.attr("type"), Some("error"));
    let conds = error_conditions(&stale);
    assert!(
        conds.iter().any(|c| c == "bad-request") && conds.iter().any(|c| c == "bad-sessionid"),
        "{conds:?}"
    );
    // An unknown node is a bad request.
    let unknown = iq(
        &admin,
        &component,
        "set",
        &format!("<command xmlns='{NS_COMMANDS}' node='reboot' action='execute'/>"),
    )
    .await?;
    assert_eq!(unknown.attr("type"), Some("error"));
    assert!(unknown
        .children()
        .filter(|c| c.name() == "error")
        .any(|e| e.has_child("bad-request", NS_STANZAS)));
    Ok(())
}
