//! IRC as the gateway sees it ([`junction_network::Network`]): one `[irc.<name>]` section per
//! network (instance `irc:<name>`), channels and nicks compared by RFC 1459 case mapping,
//! admin identities and bans that are accounts or `nick!user@host` masks, and the adapter.

use crate::config::{self, channel_ok, IrcConfig, RawIrcs};
use crate::IrcAdapter;
use junction_core::{NetworkId, RoomRef, Sender, UserRef};
use junction_network::{
    BoxAdapter, Build, Checker, Checks, Checkup, Claim, Network, Out, Raw, Refusal, Section, Syntax,
};

/// The section key: `[irc.<name>]`.
pub const KEY: &str = "irc";

/// Longest `[gateway] public_url`: paste links go on IRC lines, next to text.
pub const MAX_PUBLIC_URL: usize = 200;

/// How IRC channels and users are written.
static SYNTAX: Syntax = Syntax {
    name: "IRC",
    rooms: &["network/#channel"],
    user: "network/nick",
    more_users: &["network/nick!user@host"],
    admins: &["network/account", "network/nick!user@host"],
};

/// IRC networks, each through a bot and puppet connections.
pub struct Irc;

/// The network id of `[irc.<name>]`: `irc:<name>`.
pub fn network_id(name: &str) -> NetworkId {
    NetworkId::new(format!("{KEY}:{name}"))
}

fn configured(networks: &[NetworkId], name: &str) -> bool {
    let id = network_id(name);
    networks.contains(&id)
}

/// Every `[irc.<name>]` as read.
struct RawSection(RawIrcs);

impl Raw for RawSection {
    fn declared(&self) -> Vec<NetworkId> {
        self.0.keys().map(|k| network_id(k.get_ref())).collect()
    }

    fn validate(&self, check: &mut Checker<'_>) -> Option<Vec<Section>> {
        let checked: Vec<_> = self
            .0
            .iter()
            .map(|(name, raw)| config::validate(name, raw, check))
            .collect();
        checked
            .into_iter()
            .map(|c| c.map(|c| Section::new(network_id(&c.name), c)))
            .collect()
    }
}

/// RFC 1459 case folding (what most IRC servers use for nicks and channels).
pub fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// True when IRC mask `pattern` (with `*` and `?`) matches `text`; both already folded.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Network for Irc {
    fn key(&self) -> &'static str {
        KEY
    }

    fn read(&self, file: &str) -> Result<Option<Box<dyn Raw>>, toml::de::Error> {
        let raw = config::read(file)?;
        Ok((!raw.is_empty()).then(|| Box::new(RawSection(raw)) as Box<dyn Raw>))
    }

    fn owns(&self, network: &NetworkId) -> bool {
        network
            .as_str()
            .strip_prefix(KEY)
            .is_some_and(|rest| rest.starts_with(':'))
    }

    fn syntax(&self) -> &'static Syntax {
        &SYNTAX
    }

    fn config_room(&self, room: &str, declared: &[NetworkId]) -> Result<RoomRef, String> {
        let Some((net, chan)) = room.split_once('/') else {
            return Err(format!(
                "`{room}` is not an IRC channel: write `network/#channel`"
            ));
        };
        if !channel_ok(chan) {
            return Err(format!(
                "`{chan}` is not an IRC channel name (starts with # or &, no spaces, commas or \
                 control characters)"
            ));
        }
        if !configured(declared, net) {
            return Err(format!(
                "there is no [irc.{net}] section for network `{net}`"
            ));
        }
        Ok(RoomRef::new(network_id(net), chan))
    }

    /// `network/account` or `network/nick!user@host`, never a bare nick: anyone can take one.
    fn config_admin(&self, text: &str, declared: &[NetworkId]) -> Claim<UserRef> {
        let Some((net, who)) = text.split_once('/') else {
            return Claim::No;
        };
        if !configured(declared, net) {
            return Claim::Sure(Err(Refusal::Said(format!(
                "no [irc.{net}] section for `{text}`"
            ))));
        }
        let mask = who.contains('!') && who.contains('@');
        let account = !who.is_empty() && !who.contains(['!', '@', ' ']);
        Claim::Sure(if mask || account {
            Ok(UserRef::new(network_id(net), who))
        } else {
            Err(Refusal::Syntax("not an account or mask".into()))
        })
    }

    /// `network/#channel`, also `irc:network/#channel`.
    fn room(&self, text: &str, configured_networks: &[NetworkId]) -> Claim<RoomRef> {
        let written = text.strip_prefix("irc:").unwrap_or(text);
        let Some((net, chan)) = written.split_once('/') else {
            return Claim::No;
        };
        if !chan.starts_with(['#', '&']) || net.contains(['@', ':', '#', '!']) {
            return Claim::No;
        }
        Claim::Sure(if !channel_ok(chan) {
            Err(Refusal::Syntax("not an IRC channel name".into()))
        } else if !configured(configured_networks, net) {
            Err(Refusal::Said(format!(
                "There is no IRC network `{net}` in the config."
            )))
        } else {
            Ok(RoomRef::new(network_id(net), chan))
        })
    }

    /// A channel written without its network (`#lobby`).
    fn room_hint(&self, text: &str) -> Option<&'static str> {
        (text.starts_with(['#', '&', '!']) && !text.contains(':'))
            .then_some("an IRC channel as `network/#channel`")
    }

    /// `network/nick`, `network/$a:account` or a mask `network/nick!user@host`, also with
    /// `irc:` in front; shown by the nick.
    fn user(&self, text: &str, configured_networks: &[NetworkId]) -> Claim<(UserRef, String)> {
        let written = text.strip_prefix("irc:").unwrap_or(text);
        let Some((net, who)) = written.split_once('/') else {
            return Claim::No;
        };
        if !configured(configured_networks, net) {
            return Claim::Sure(Err(Refusal::Said(format!(
                "There is no IRC network `{net}` in the config."
            ))));
        }
        let bad = who.is_empty()
            || who.chars().any(|c| c.is_whitespace() || c.is_control())
            || (who.contains('!') != who.contains('@'));
        if bad {
            return Claim::Sure(Err(Refusal::Said(format!(
                "`{who}` is not an IRC nick, account or `nick!user@host` mask."
            ))));
        }
        let shown = who.split('!').next().unwrap_or(who).to_owned();
        let shown = if shown.is_empty() || shown == "*" {
            who.to_owned()
        } else {
            shown
        };
        Claim::Sure(Ok((UserRef::new(network_id(net), who), shown)))
    }

    fn fold_room(&self, room: &str) -> String {
        fold(room)
    }

    fn fold_user(&self, user: &str) -> String {
        fold(user)
    }

    /// An admin mask matches the sender's `nick!user@host`.
    fn identity_matches(&self, admin: &str, who: &str) -> bool {
        let (a, w) = (fold(admin), fold(who));
        if a.contains('!') {
            return w.contains('!') && glob(&a, &w);
        }
        a == w
    }

    fn is_mask(&self, user: &str) -> bool {
        user.contains('!')
    }

    fn ban_patterns(&self) -> bool {
        true
    }

    /// A mask (wildcards in every part) is matched against the sender's `nick!user@host`
    /// when the line carried it (else, for a mask naming a nick, against their nick), a bare
    /// nick against their current nick, an account id (`$a:name`) against their account.
    fn ban_covers(&self, ban: &str, also: &[String], sender: &Sender) -> bool {
        let (b, u) = (fold(ban), fold(sender.user.user.as_str()));
        if b == u {
            return true;
        }
        let address = sender.address.as_deref().map(fold);
        let current_nick = address
            .as_deref()
            .and_then(|a| a.split('!').next())
            .filter(|n| !n.is_empty());
        let matches = |pattern: &str| -> bool {
            if pattern == u {
                return true;
            }
            if pattern.contains('!') {
                if u.contains('!') {
                    return glob(pattern, &u);
                }
                if let Some(a) = &address {
                    return glob(pattern, a);
                }
                let nick = pattern.split('!').next().unwrap_or("");
                return nick != "*" && !u.starts_with('$') && glob(nick, &u);
            }
            // A bare nick: whoever wears it now.
            !pattern.starts_with('$') && current_nick == Some(pattern)
        };
        matches(&b) || also.iter().any(|p| matches(&fold(p)))
    }

    fn sender_id(&self, vouched: &str) -> String {
        match vouched.split_once('!') {
            Some((nick, _)) => crate::inbound::nick_user_id(nick),
            None => crate::inbound::account_user_id(vouched),
        }
    }

    /// The `*!user@host` and the account they were seen with, so a new nick is still covered.
    fn ban_learns(&self, sender: &Sender) -> Vec<String> {
        let mut learnt = Vec::new();
        if let Some((_, user_host)) = sender.address.as_deref().and_then(|a| a.split_once('!')) {
            learnt.push(format!("*!{user_host}"));
        }
        if sender.user.user.as_str().starts_with('$') {
            learnt.push(sender.user.user.0.clone());
        }
        learnt
    }

    fn public_url_limit(&self) -> Option<(usize, &'static str)> {
        Some((MAX_PUBLIC_URL, "leave room for the text on an IRC line"))
    }

    fn adapter(&self, section: &Section, build: &Build<'_>) -> Result<BoxAdapter, String> {
        let c: &IrcConfig = section
            .get()
            .ok_or_else(|| format!("{} is not an [irc.<name>] section", section.network))?;
        if !build.pastes {
            tracing::info!(network = %section.network, "Messages longer than an IRC network's max_lines are cut on IRC, with a note saying so, because no [gateway] web (and public_url) is configured to serve their whole text.");
        }
        Ok(BoxAdapter::new(IrcAdapter::new(c.clone())))
    }

    fn doctor<'a>(
        &'a self,
        section: &'a Section,
        checkup: Checkup<'a>,
        out: Out<'a, '_>,
    ) -> Checks<'a> {
        Box::pin(async move {
            if let Some(c) = section.get::<IrcConfig>() {
                crate::doctor::check(c, checkup.rooms, out).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn local() -> Vec<NetworkId> {
        vec![network_id("local")]
    }

    #[test]
    fn masks_glob() {
        assert!(glob("a*b?d", "axxbcd"));
        assert!(!glob("a*b?d", "axxbd"));
        assert!(glob("*", ""));
    }

    #[test]
    fn instances_are_irc_colon_name() {
        assert!(Irc.owns(&network_id("local")));
        assert!(!Irc.owns(&NetworkId::new("ircx")));
        assert!(!Irc.owns(&NetworkId::new("irc")));
    }

    #[test]
    fn rooms_and_users_as_typed() {
        assert_eq!(
            Irc.room("irc:local/#a", &local()),
            Claim::Sure(Ok(RoomRef::new("irc:local", "#a")))
        );
        assert!(matches!(
            Irc.room("other/#a", &local()),
            Claim::Sure(Err(Refusal::Said(_)))
        ));
        assert_eq!(Irc.room("#a:m.test", &local()), Claim::No);
        assert_eq!(Irc.room("a@b/c", &local()), Claim::No);
        assert_eq!(
            Irc.user("local/bob!b@h", &local()),
            Claim::Sure(Ok((UserRef::new("irc:local", "bob!b@h"), "bob".into())))
        );
        assert!(matches!(
            Irc.user("local/bob!b", &local()),
            Claim::Sure(Err(_))
        ));
        assert_eq!(
            Irc.room_hint("#lobby"),
            Some("an IRC channel as `network/#channel`")
        );
        assert_eq!(Irc.room_hint("#lobby:m.test"), None);
    }

    #[test]
    fn admins_are_accounts_or_masks() {
        assert_eq!(
            Irc.config_admin("local/acct", &local()),
            Claim::Sure(Ok(UserRef::new("irc:local", "acct")))
        );
        assert!(matches!(
            Irc.config_admin("local/nick!u", &local()),
            Claim::Sure(Err(Refusal::Syntax(_)))
        ));
        assert!(Irc.identity_matches("*!*@Admin.host", "anyone!x@admin.HOST"));
        assert!(!Irc.identity_matches("*!*@admin.host", "anyone"));
    }
}
