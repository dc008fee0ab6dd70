//! [`Networks`]: every network the gateway speaks, asked in turn.

use crate::{Claim, Network, Refusal};
use junction_core::{NetworkId, RoomRef, UserRef};

/// The networks of a gateway, in the order it lists them (sections, `status`, `/metrics`).
#[derive(Clone, Copy)]
pub struct Networks(&'static [&'static dyn Network]);

impl Networks {
    /// A registry of `networks`; their keys must differ.
    pub const fn new(networks: &'static [&'static dyn Network]) -> Self {
        Self(networks)
    }

    /// Every network, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'static dyn Network> {
        self.0.iter().copied()
    }

    /// Every section key, in order: `matrix`, `xmpp`, `irc`.
    pub fn keys(&self) -> Vec<&'static str> {
        self.iter().map(|n| n.key()).collect()
    }

    /// The network whose section key is `key`.
    pub fn by_key(&self, key: &str) -> Option<&'static dyn Network> {
        self.iter().find(|n| n.key() == key)
    }

    /// The network `network` is an instance of.
    pub fn of(&self, network: &NetworkId) -> Option<&'static dyn Network> {
        self.iter().find(|n| n.owns(network))
    }

    /// The form in which two spellings of one room compare equal.
    pub fn same_room(&self, r: &RoomRef) -> RoomRef {
        match self.of(&r.network) {
            Some(n) => RoomRef::new(r.network.clone(), n.fold_room(r.room.as_str())),
            None => r.clone(),
        }
    }

    /// The form in which two spellings of one user id compare equal.
    pub fn fold_user(&self, u: &UserRef) -> String {
        match self.of(&u.network) {
            Some(n) => n.fold_user(u.user.as_str()),
            None => u.user.as_str().to_owned(),
        }
    }

    /// True when configured identity `admin` is `who`: same network, and the same id as the
    /// network compares them (or a mask of it, see [`Network::identity_matches`]).
    pub fn identity_matches(&self, admin: &UserRef, who: &UserRef) -> bool {
        if admin.network != who.network {
            return false;
        }
        match self.of(&admin.network) {
            Some(n) => n.identity_matches(admin.user.as_str(), who.user.as_str()),
            None => admin.user == who.user,
        }
    }

    /// The claim that stands: the first network sure of `text`, else the first that may.
    fn claim<T>(
        &self,
        ask: impl Fn(&'static dyn Network) -> Claim<T>,
    ) -> Option<(&'static dyn Network, Result<T, Refusal>)> {
        let mut maybe = None;
        for n in self.iter() {
            match ask(n) {
                Claim::Sure(r) => return Some((n, r)),
                Claim::Maybe(r) if maybe.is_none() => maybe = Some((n, r)),
                Claim::Maybe(_) | Claim::No => {}
            }
        }
        maybe
    }

    /// A room as typed in an admin command; `Err` is the answer for the person who typed it.
    pub fn room(&self, text: &str, configured: &[NetworkId]) -> Result<RoomRef, String> {
        let Some((network, claim)) = self.claim(|n| n.room(text, configured)) else {
            let forms: Vec<String> = self
                .iter()
                .flat_map(|n| n.syntax().rooms)
                .map(|f| format!("`{f}`"))
                .collect();
            return Err(format!(
                "`{text}` is not a room: write {}",
                list(&forms, " or ")
            ));
        };
        match claim {
            Ok(room) => Ok(room),
            Err(Refusal::Said(answer)) => Err(answer),
            Err(Refusal::Syntax(why)) => {
                // Written like another configured network's room short of what tells it apart
                // (`#lobby` for an IRC channel): say both.
                let hint = self
                    .iter()
                    .filter(|n| n.key() != network.key())
                    .filter(|n| configured.iter().any(|c| n.owns(c)))
                    .find_map(|n| n.room_hint(text));
                let syntax = network.syntax();
                Err(match (hint, syntax.rooms.first()) {
                    (Some(hint), Some(form)) => format!(
                        "`{text}` is not a room: write {hint}, a {} room as `{form}`",
                        syntax.name
                    ),
                    _ => format!("`{text}` is not a room: {why}"),
                })
            }
        }
    }

    /// A user as typed in an admin command, with the name to show for them; `Err` is the
    /// answer for the person who typed it.
    pub fn user(&self, text: &str, configured: &[NetworkId]) -> Result<(UserRef, String), String> {
        match self.claim(|n| n.user(text, configured)) {
            Some((_, Ok(user))) => Ok(user),
            Some((_, Err(Refusal::Said(answer)))) => Err(answer),
            Some((_, Err(Refusal::Syntax(why)))) => Err(format!("`{text}` is not a user: {why}")),
            None => {
                let forms: Vec<String> = self
                    .iter()
                    .map(|n| format!("`{}` ({})", n.syntax().user, n.syntax().name))
                    .collect();
                Err(format!(
                    "`{text}` is not a user: write {}.",
                    list(&forms, " or ")
                ))
            }
        }
    }

    /// An admin identity of `bridges.toml`; `Err` is the message for the file.
    pub fn admin(&self, text: &str, declared: &[NetworkId]) -> Result<UserRef, String> {
        match self.claim(|n| n.config_admin(text, declared)) {
            Some((_, Ok(user))) => Ok(user),
            Some((_, Err(Refusal::Said(message)))) => Err(message),
            Some((_, Err(Refusal::Syntax(_)))) | None => {
                let forms: Vec<String> = self
                    .iter()
                    .map(|n| {
                        let syntax = n.syntax();
                        let written: Vec<String> =
                            syntax.admins.iter().map(|f| format!("`{f}`")).collect();
                        format!("{} ({})", written.join(" or "), syntax.name)
                    })
                    .collect();
                Err(format!(
                    "`{text}` is not an admin identity: write {}",
                    list(&forms, ", or ")
                ))
            }
        }
    }

    /// How rooms and users are written, two lines for the admin commands' help.
    pub fn help(&self) -> String {
        let rooms: Vec<&str> = self
            .iter()
            .flat_map(|n| n.syntax().rooms)
            .copied()
            .collect();
        let users: Vec<String> = self
            .iter()
            .map(|n| {
                let syntax = n.syntax();
                if syntax.more_users.is_empty() {
                    syntax.user.to_owned()
                } else {
                    format!(
                        "{} ({}; or {})",
                        syntax.user,
                        syntax.name,
                        syntax.more_users.join(" or ")
                    )
                }
            })
            .collect();
        format!("Rooms: {}.\nUsers: {}.", rooms.join(", "), users.join(", "))
    }
}

/// `a, b<last>c`: the items joined by commas, the last one by `last` (`" or "`, `", or "`).
fn list(items: &[String], last: &str) -> String {
    match items.split_last() {
        None => String::new(),
        Some((only, [])) => only.clone(),
        Some((tail, head)) => format!("{}{last}{tail}", head.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_end_with_their_own_word() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(list(&v(&["a", "b", "c"]), " or "), "a, b or c");
        assert_eq!(list(&v(&["a", "b", "c"]), ", or "), "a, b, or c");
        assert_eq!(list(&v(&["a"]), " or "), "a");
        assert_eq!(list(&[], " or "), "");
    }
}
