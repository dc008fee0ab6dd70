//! Who holds channel operator status (or higher) in the linked channels, as NAMES and MODE
//! show it to the bot: a topic set by an operator is a moderator's and may be set elsewhere
//! with the gateway's own power; anyone else's crosses as a line saying who set what.

use irc_proto::{ChannelMode, Mode};
use std::collections::{BTreeMap, BTreeSet};

/// Operators per channel; channels and nicks folded by the caller.
#[derive(Debug, Default)]
pub struct Ops(BTreeMap<String, BTreeSet<String>>);

/// The NAMES prefix symbols that mean operator or higher: every symbol of the server's
/// `PREFIX` up to and including `@` (`~&@` on InspIRCd), or `@` alone if it has none.
pub fn op_symbols(prefix_symbols: &str) -> &str {
    match prefix_symbols.find('@') {
        Some(i) => &prefix_symbols[..=i],
        None => "@",
    }
}

impl Ops {
    /// One name of a NAMES reply (`@alice`, `+bob`), prefixes still on; `fold` folds nicks.
    pub fn name(
        &mut self,
        chan: &str,
        name: &str,
        prefix_symbols: &str,
        fold: &dyn Fn(&str) -> String,
    ) {
        let ops = op_symbols(prefix_symbols);
        let nick = name.trim_start_matches(|c| prefix_symbols.contains(c));
        let prefixes = &name[..name.len() - nick.len()];
        let set = self.0.entry(chan.to_owned()).or_default();
        if prefixes.chars().any(|c| ops.contains(c)) {
            set.insert(fold(nick));
        } else {
            set.remove(&fold(nick));
        }
    }

    /// A channel MODE line: `+o`/`-o` (and founder/admin, which include operator power).
    pub fn mode(&mut self, chan: &str, modes: &[Mode<ChannelMode>], fold: &dyn Fn(&str) -> String) {
        for m in modes {
            let (plus, mode, arg) = match m {
                Mode::Plus(mode, arg) => (true, mode, arg),
                Mode::Minus(mode, arg) => (false, mode, arg),
                Mode::NoPrefix(_) => continue,
            };
            let (ChannelMode::Oper | ChannelMode::Admin | ChannelMode::Founder, Some(nick)) =
                (mode, arg)
            else {
                continue;
            };
            let set = self.0.entry(chan.to_owned()).or_default();
            if plus {
                set.insert(fold(nick));
            } else {
                set.remove(&fold(nick));
            }
        }
    }

    /// `nick` left `chan` (part, kick).
    pub fn left(&mut self, chan: &str, nick: &str) {
        if let Some(set) = self.0.get_mut(chan) {
            set.remove(nick);
        }
    }

    /// `nick` quit the server.
    pub fn quit(&mut self, nick: &str) {
        for set in self.0.values_mut() {
            set.remove(nick);
        }
    }

    /// `old` is now `new`.
    pub fn renamed(&mut self, old: &str, new: &str) {
        for set in self.0.values_mut() {
            if set.remove(old) {
                set.insert(new.to_owned());
            }
        }
    }

    /// True when `nick` is an operator (or higher) of `chan`.
    pub fn is_op(&self, chan: &str, nick: &str) -> bool {
        self.0.get(chan).is_some_and(|s| s.contains(nick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(s: &str) -> String {
        s.to_ascii_lowercase()
    }

    #[test]
    fn names_and_modes_track_operators() {
        let mut ops = Ops::default();
        for n in ["~Founder", "@Alice", "%half", "+voice", "plain"] {
            ops.name("#c", n, "~&@%+", &fold);
        }
        assert!(ops.is_op("#c", "founder"));
        assert!(ops.is_op("#c", "alice"));
        assert!(!ops.is_op("#c", "half"));
        assert!(!ops.is_op("#c", "voice"));
        assert!(!ops.is_op("#c", "plain"));
        ops.mode(
            "#c",
            &[
                Mode::Plus(ChannelMode::Oper, Some("Plain".into())),
                Mode::Minus(ChannelMode::Oper, Some("alice".into())),
                Mode::Plus(ChannelMode::Ban, Some("x!*@*".into())),
            ],
            &fold,
        );
        assert!(ops.is_op("#c", "plain"));
        assert!(!ops.is_op("#c", "alice"));
        ops.renamed("plain", "fancy");
        assert!(ops.is_op("#c", "fancy"));
        ops.left("#c", "fancy");
        assert!(!ops.is_op("#c", "fancy"));
        ops.quit("founder");
        assert!(!ops.is_op("#c", "founder"));
        assert!(!ops.is_op("#other", "founder"));
        assert_eq!(op_symbols("@+"), "@");
        assert_eq!(op_symbols("+"), "@");
    }
}
