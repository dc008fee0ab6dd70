//! Admin commands: a PRIVMSG to the bot's nick from someone on the network becomes a
//! [`junction_core::Command`]; the answer goes back as one NOTICE per line.

use irc_proto::{Message, Prefix};
use junction_core::{NetworkId, UserRef};

/// Every identity the server vouches for the sender of `msg`, most specific first: the
/// services account (IRCv3 `account` tag) when the server sent one, then always the
/// `nick!user@host` mask. Empty when the message has no user prefix.
pub fn identities(network: &NetworkId, msg: &Message) -> Vec<UserRef> {
    let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else {
        return Vec::new();
    };
    let mut from = Vec::new();
    let account = msg
        .tags
        .as_ref()
        .and_then(|tags| tags.iter().find(|t| t.0 == "account"))
        .and_then(|t| t.1.as_deref())
        .filter(|a| !a.is_empty() && *a != "*");
    if let Some(account) = account {
        from.push(UserRef::new(network.clone(), account));
    }
    from.push(UserRef::new(
        network.clone(),
        format!("{nick}!{user}@{host}"),
    ));
    from
}

/// The text of a private message that is a command: not a CTCP request, not empty.
pub fn command_text(text: &str) -> Option<&str> {
    let t = text.trim();
    (!t.is_empty() && !t.starts_with('\x01')).then_some(t)
}

/// The NOTICE lines that carry `reply` to `nick`: one per non-empty line, each cut to fit.
pub fn reply_lines(nick: &str, reply: &str, budget: usize) -> Vec<String> {
    reply
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .flat_map(|l| crate::split::split_line(l, budget))
        .map(|part| format!("NOTICE {nick} :{part}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_first_then_mask() {
        let net = NetworkId::new("irc:local");
        let m: Message = "@account=alice;time=2024-01-01T00:00:00.000Z :al!~a@host.test PRIVMSG junction :status"
            .parse()
            .expect("parses");
        assert_eq!(
            identities(&net, &m),
            vec![
                UserRef::new("irc:local", "alice"),
                UserRef::new("irc:local", "al!~a@host.test"),
            ]
        );
        let m: Message = ":al!~a@host.test PRIVMSG junction :status"
            .parse()
            .expect("parses");
        assert_eq!(
            identities(&net, &m),
            vec![UserRef::new("irc:local", "al!~a@host.test")]
        );
        let m: Message = ":server.test NOTICE junction :hi".parse().expect("parses");
        assert!(identities(&net, &m).is_empty());
    }

    #[test]
    fn replies_one_notice_per_line() {
        assert_eq!(
            reply_lines("al", "ok\n\nlinked lobby\n", 400),
            vec!["NOTICE al :ok", "NOTICE al :linked lobby"]
        );
        assert_eq!(command_text("\x01VERSION\x01"), None);
        assert_eq!(command_text("  help "), Some("help"));
    }
}
