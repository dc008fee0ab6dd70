//! Deeply nested XMPP stanzas from an ordinary user's client. The component stream is read
//! through a depth bound (`junction_xmpp::depth`), so the gateway never builds a tree deeper
//! than it: the stanza crosses without its deep part, the cut is counted in `/metrics`
//! (`junction_errors_total{network="xmpp",kind="stanza_too_deep"}`), the gateway stays up, the next
//! ordinary line crosses in all six directions, and a restart on the same data dir stays up
//! too.

use crate::hostile_fanout::counter_reaches;
use crate::hostile_input::relays_now_and_after_a_restart;
use crate::lobby::Lobby;
use anyhow::Context as _;
use junction_testkit::unique;

/// Nesting depth of the payload: the deepest the test Prosody (0.12) passes through a room.
/// It refuses 36,000 levels at the client connection (25,000 elements per stanza at most,
/// `c2s_max_child_elements`), and a room message with 130 levels or more of payload is
/// never reflected to the occupants; 125 levels are. That is still four times the gateway's
/// bound (`MAX_STANZA_DEPTH`, 32 counting the stream), so the deep part is cut on the way
/// in; the unit tests of `junction_xmpp::depth` cover 100,000 levels.
const DEPTH: usize = 125;

/// A groupchat message whose payload nests `<x>` 125 deep: its body crosses, the payload
/// below the bound is dropped and the cut is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_stanza_from_xmpp_keeps_the_gateway_up() -> anyhow::Result<()> {
    let (mut lobby, base) = Lobby::start_with_metrics("").await?;
    let tag = unique("ds");
    let payload = format!(
        "<x xmlns='urn:example:deep'>{}{}</x>",
        "<x>".repeat(DEPTH - 1),
        "</x>".repeat(DEPTH - 1)
    );
    lobby.xmpp.send_groupchat_with(&lobby.muc, &tag, &payload)?;
    lobby
        .irc_sees(&tag)
        .await
        .context("the deep stanza's body → irc")?;
    lobby
        .matrix_sees(&tag)
        .await
        .context("the deep stanza's body → matrix")?;
    counter_reaches(&base, "junction_errors_total", "xmpp", "stanza_too_deep", 1)
        .await
        .context("the cut stanza counted")?;
    relays_now_and_after_a_restart(&mut lobby, "after a stanza nested 125 deep from XMPP").await
}
