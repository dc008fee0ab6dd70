//! What a network with one instance shares: its section (`[matrix]`, `[xmpp]`) is its only
//! instance, whose network id is the section key.

use crate::{Checker, Raw, Refusal, Section, SectionConfig};
use junction_core::{NetworkId, RoomRef};

/// A network with one instance, named by its section key (`Single("matrix")`).
#[derive(Clone, Copy, Debug)]
pub struct Single(pub &'static str);

impl Single {
    /// The instance's network id: the key.
    pub fn id(self) -> NetworkId {
        NetworkId::new(self.0)
    }

    /// True when `network` is the instance ([`crate::Network::owns`]).
    pub fn owns(self, network: &NetworkId) -> bool {
        network.as_str() == self.0
    }

    /// True when `networks` (declared or configured instances) hold the instance.
    pub fn among(self, networks: &[NetworkId]) -> bool {
        networks.iter().any(|n| self.owns(n))
    }

    /// `room` (written as the network writes a room) on the instance, for a link in the
    /// config ([`crate::Network::config_room`]); refused when `declared` has no section for it.
    pub fn config_room(self, room: &str, declared: &[NetworkId]) -> Result<RoomRef, String> {
        if !self.among(declared) {
            return Err(format!("there is no [{}] section for this room", self.0));
        }
        Ok(RoomRef::new(self.0, room))
    }

    /// `room` (written as the network writes a room) on the instance, for an admin command
    /// ([`crate::Network::room`]); refused when `configured` has no section for it.
    pub fn room(self, room: &str, configured: &[NetworkId]) -> Result<RoomRef, Refusal> {
        if !self.among(configured) {
            return Err(Refusal::Said(format!(
                "There is no [{}] section in the config.",
                self.0
            )));
        }
        Ok(RoomRef::new(self.0, room))
    }

    /// The section as read (`raw`, `None` when the file has none), for
    /// [`crate::Network::read`]: [`Raw::validate`] checks it with `validate` into the one
    /// [`Section`].
    pub fn raw<T: 'static, C: SectionConfig>(
        self,
        raw: Option<T>,
        validate: fn(&T, &mut Checker<'_>) -> Option<C>,
    ) -> Option<Box<dyn Raw>> {
        raw.map(|raw| {
            Box::new(SingleRaw {
                key: self,
                raw,
                validate,
            }) as Box<dyn Raw>
        })
    }
}

/// A single-instance section as read, with the function that checks it.
struct SingleRaw<T, C> {
    key: Single,
    raw: T,
    validate: fn(&T, &mut Checker<'_>) -> Option<C>,
}

impl<T, C: SectionConfig> Raw for SingleRaw<T, C> {
    fn declared(&self) -> Vec<NetworkId> {
        vec![self.key.id()]
    }

    fn validate(&self, check: &mut Checker<'_>) -> Option<Vec<Section>> {
        let config = (self.validate)(&self.raw, check)?;
        Some(vec![Section::new(self.key.id(), config)])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Settings(u8);

    fn check(raw: &u8, _: &mut Checker<'_>) -> Option<Settings> {
        (*raw > 0).then_some(Settings(*raw))
    }

    #[test]
    fn one_section_is_the_one_instance() {
        let one = Single("solo");
        assert!(one.owns(&NetworkId::new("solo")));
        assert!(!one.owns(&NetworkId::new("solo:x")));
        assert!(one.among(&[NetworkId::new("a"), NetworkId::new("solo")]));
        assert_eq!(
            one.config_room("r", &[NetworkId::new("a")]).unwrap_err(),
            "there is no [solo] section for this room"
        );
        assert_eq!(
            one.room("r", &[one.id()]).unwrap(),
            RoomRef::new("solo", "r")
        );
        assert!(one.raw(None::<u8>, check).is_none());
        let raw = one.raw(Some(3u8), check).unwrap();
        assert_eq!(raw.declared(), vec![NetworkId::new("solo")]);
        let env = |_: &str| None;
        let mut checker = Checker::new("", std::path::Path::new("."), &env);
        let sections = raw.validate(&mut checker).unwrap();
        assert_eq!(sections.len(), 1);
        assert_eq!(sections[0].network, NetworkId::new("solo"));
        assert_eq!(sections[0].get::<Settings>(), Some(&Settings(3)));
    }
}
