//! Gateway config text for a test slot, so the end-to-end tests and the benchmark write the
//! network sections the same way and only say what differs (the `[gateway]` table, the
//! bridges, tweaks by `str::replace`).

use crate::servers::{Servers, Slot};
use std::net::SocketAddr;

/// The IRC bot nick a slot's gateway uses: 9 characters at most, for ngIRCd.
pub fn bot_nick(slot: &Slot) -> String {
    format!("jt{}gw", slot.index)
}

/// The `[matrix]` table for `slot`'s appservice on `servers`' homeserver.
pub fn matrix_section(servers: &Servers, slot: &Slot) -> String {
    format!(
        r#"
[matrix]
homeserver = "{hs}"
server_name = "{server_name}"
listen = "{listen}"
as_token = "{as_token}"
hs_token = "{hs_token}"
bot = "{bot}"
id = "{as_id}"
user_prefix = "{prefix}"
"#,
        hs = servers.matrix.url,
        server_name = servers.matrix.server_name,
        listen = slot.listen,
        as_token = slot.as_token,
        hs_token = slot.hs_token,
        bot = slot.bot,
        as_id = slot.as_id,
        prefix = slot.user_prefix,
    )
}

/// The `[xmpp]` table for `slot`'s component on `servers`' Prosody.
pub fn xmpp_section(servers: &Servers, slot: &Slot) -> String {
    format!(
        r#"
[xmpp]
component = "{component}"
server = "{xmpp}"
secret = "{secret}"
"#,
        component = slot.component,
        xmpp = servers.xmpp.component,
        secret = slot.component_secret,
    )
}

/// The `[irc.local]` table for the IRC server at `irc`: the slot's bot nick, puppets (50 at
/// most), and a flood-control pace (20 lines a second, bursts of 50) that the test servers
/// allow.
pub fn irc_section(irc: SocketAddr, slot: &Slot) -> String {
    format!(
        r#"
[irc.local]
server = "{irc}"
nick = "{nick}"
mode = "puppet"
max_puppets = 50
lines_per_second = 20.0
burst = 50
"#,
        nick = bot_nick(slot),
    )
}

/// A `[[bridge]]` named `name` linking the rooms given (`local/#chan` for IRC).
pub fn bridge(name: &str, matrix: Option<&str>, xmpp: Option<&str>, irc: Option<&str>) -> String {
    let mut s = format!("\n[[bridge]]\nname = \"{name}\"\n");
    for (key, room) in [("matrix", matrix), ("xmpp", xmpp), ("irc", irc)] {
        if let Some(room) = room {
            s.push_str(&format!("{key} = \"{room}\"\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_lists_only_the_rooms_given() {
        let b = bridge("lobby", Some("!r:m"), None, Some("local/#c"));
        assert_eq!(
            b,
            "\n[[bridge]]\nname = \"lobby\"\nmatrix = \"!r:m\"\nirc = \"local/#c\"\n"
        );
    }
}
