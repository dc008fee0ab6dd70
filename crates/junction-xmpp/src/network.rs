//! XMPP as the gateway sees it ([`junction_network::Network`]): the `[xmpp]` section, MUC
//! rooms and bare JIDs (compared case-insensitively), bans on an occupant's real JID, and the
//! adapter.

use crate::config::{self, bare_jid, XmppSection};
use crate::XmppAdapter;
use junction_core::{NetworkId, RoomRef, Sender, UserRef};
use junction_network::{
    BoxAdapter, Build, Checks, Checkup, Claim, Network, Out, Raw, Refusal, Section, Single, Syntax,
};

/// The section key, and the one instance's network id.
pub const KEY: &str = "xmpp";

/// How XMPP rooms and users are written.
static SYNTAX: Syntax = Syntax {
    name: "XMPP",
    rooms: &["room@muc.domain"],
    user: "user@domain",
    more_users: &[],
    admins: &["user@domain"],
};

/// XMPP, through one XEP-0114 component.
pub struct Xmpp;

/// The one instance.
const ONE: Single = Single(KEY);

impl Network for Xmpp {
    fn key(&self) -> &'static str {
        KEY
    }

    fn read(&self, file: &str) -> Result<Option<Box<dyn Raw>>, toml::de::Error> {
        Ok(ONE.raw(config::read(file)?, config::validate))
    }

    fn syntax(&self) -> &'static Syntax {
        &SYNTAX
    }

    fn config_room(&self, room: &str, declared: &[NetworkId]) -> Result<RoomRef, String> {
        if let Err(why) = bare_jid(room, true) {
            return Err(format!(
                "`{room}` is not a MUC room `room@muc.domain`: {why}"
            ));
        }
        ONE.config_room(room, declared)
    }

    fn config_admin(&self, text: &str, _declared: &[NetworkId]) -> Claim<UserRef> {
        if !text.contains('@') {
            return Claim::No;
        }
        Claim::Maybe(match bare_jid(text, true) {
            Ok(()) => Ok(UserRef::new(KEY, text)),
            Err(why) => Err(Refusal::Syntax(why)),
        })
    }

    fn room(&self, text: &str, configured_networks: &[NetworkId]) -> Claim<RoomRef> {
        if !text.contains('@') {
            return Claim::No;
        }
        Claim::Maybe(match bare_jid(text, true) {
            Ok(()) => ONE.room(text, configured_networks),
            Err(why) => Err(Refusal::Syntax(why)),
        })
    }

    fn user(&self, text: &str, _configured: &[NetworkId]) -> Claim<(UserRef, String)> {
        if !text.contains('@') {
            return Claim::No;
        }
        Claim::Maybe(match bare_jid(text, true) {
            Ok(()) => {
                let shown = text.split('@').next().unwrap_or(text).to_owned();
                Ok((UserRef::new(KEY, text), shown))
            }
            Err(why) => Err(Refusal::Said(format!(
                "`{text}` is not an XMPP address: {why}"
            ))),
        })
    }

    /// Nodeprep and nameprep fold case.
    fn fold_room(&self, room: &str) -> String {
        room.to_lowercase()
    }

    fn fold_user(&self, user: &str) -> String {
        user.to_lowercase()
    }

    /// Occupants are named by occupant-id or room/nick, a ban names the bare JID: the adapter
    /// puts the occupant's real JID on the sender (as its address) where the room shows it.
    fn ban_alias(&self, sender: &Sender) -> Option<String> {
        sender.address.clone()
    }

    fn adapter(&self, section: &Section, build: &Build<'_>) -> Result<BoxAdapter, String> {
        let s: &XmppSection = section
            .get()
            .ok_or_else(|| format!("{} is not an [xmpp] section", section.network))?;
        let adapter = XmppAdapter::new(s.config.clone())
            .with_occupant_limits(s.occupants)
            .with_cap_refusals(build.counter("puppet_cap"))
            .with_refusals(build.counter("unauthorised"));
        (build.follow)("stanza_too_deep", adapter.cut_deep_stanzas());
        Ok(BoxAdapter::new(adapter))
    }

    fn doctor<'a>(
        &'a self,
        section: &'a Section,
        checkup: Checkup<'a>,
        out: Out<'a, '_>,
    ) -> Checks<'a> {
        Box::pin(async move {
            if let Some(s) = section.get::<XmppSection>() {
                crate::doctor::check(&s.config, checkup.rooms, checkup.gateway_running, out).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rooms_and_users_as_typed() {
        let me = [NetworkId::new(KEY)];
        assert_eq!(
            Xmpp.room("a@muc.x", &me),
            Claim::Maybe(Ok(RoomRef::new(KEY, "a@muc.x")))
        );
        assert!(matches!(
            Xmpp.room("a@muc.x", &[]),
            Claim::Maybe(Err(Refusal::Said(_)))
        ));
        assert_eq!(Xmpp.room("#a:m.test", &me), Claim::No);
        assert_eq!(
            Xmpp.user("Bob@x.test", &[]),
            Claim::Maybe(Ok((UserRef::new(KEY, "Bob@x.test"), "Bob".into())))
        );
        assert_eq!(Xmpp.fold_user("Bob@X.test"), "bob@x.test");
    }

    #[test]
    fn a_ban_may_name_the_real_jid() {
        let occupant = Sender::new(UserRef::new(KEY, "occupant:abc"), "x");
        assert_eq!(Xmpp.ban_alias(&occupant), None);
        let known = occupant.with_address("evil@xmpp.test");
        assert_eq!(Xmpp.ban_alias(&known).as_deref(), Some("evil@xmpp.test"));
    }
}
