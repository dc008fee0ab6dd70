//! Matrix as the gateway sees it ([`junction_network::Network`]): the `[matrix]` section, room
//! aliases and ids, user ids, the adapter, and the appservice registration.

use crate::config::{self, MatrixSection};
use crate::registration::registration_yaml;
use crate::MatrixAdapter;
use junction_core::{Link, NetworkId, RoomRef, UserRef};
use junction_network::{
    BoxAdapter, Build, Checks, Checkup, Claim, Network, Out, Raw, Refusal, Section, Single, Syntax,
};

/// The section key, and the one instance's network id.
pub const KEY: &str = "matrix";

/// How Matrix rooms and users are written.
static SYNTAX: Syntax = Syntax {
    name: "Matrix",
    rooms: &["#alias:server", "!id:server"],
    user: "@user:server",
    more_users: &[],
    admins: &["@user:server"],
};

/// Matrix, through one appservice.
pub struct Matrix;

/// The one instance.
const ONE: Single = Single(KEY);

impl Network for Matrix {
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
        if !config::room_ok(room) {
            return Err(format!(
                "`{room}` is not a Matrix room: write an alias `#name:server` or a room id \
                 `!id:server`"
            ));
        }
        ONE.config_room(room, declared)
    }

    fn config_admin(&self, text: &str, _declared: &[NetworkId]) -> Claim<UserRef> {
        if !text.starts_with('@') {
            return Claim::No;
        }
        Claim::Sure(if config::user_ok(text) {
            Ok(UserRef::new(KEY, text))
        } else {
            Err(Refusal::Syntax("not a Matrix user id".into()))
        })
    }

    fn room(&self, text: &str, configured_networks: &[NetworkId]) -> Claim<RoomRef> {
        if !text.starts_with(['#', '!']) {
            return Claim::No;
        }
        Claim::Sure(if config::room_ok(text) {
            ONE.room(text, configured_networks)
        } else {
            Err(Refusal::Syntax(
                "write a Matrix alias `#name:server` or id `!id:server`".into(),
            ))
        })
    }

    fn user(&self, text: &str, _configured: &[NetworkId]) -> Claim<(UserRef, String)> {
        if !text.starts_with('@') {
            return Claim::No;
        }
        Claim::Sure(if config::user_ok(text) {
            Ok((UserRef::new(KEY, text), text.to_owned()))
        } else {
            Err(Refusal::Said(format!(
                "`{text}` is not a Matrix user id `@user:server`."
            )))
        })
    }

    fn adapter(&self, section: &Section, build: &Build<'_>) -> Result<BoxAdapter, String> {
        let s: &MatrixSection = section
            .get()
            .ok_or_else(|| format!("{} is not a [matrix] section", section.network))?;
        let mut adapter = MatrixAdapter::new(s.config.clone())
            // The only users whose invites the bot accepts.
            .with_admins(build.admins.iter().map(|u| u.user.to_string()))
            .with_ghost_limits(s.ghosts)
            .with_parallel_senders(s.parallel_senders)
            .with_cap_refusals(build.counter("puppet_cap"));
        if let Some(url) = &s.media_url {
            adapter = adapter.with_media_base(url.clone());
        }
        if s.encryption {
            adapter = adapter
                .with_encryption(build.data_dir, s.pickle_key.clone())
                .with_undecryptable(build.counter("undecryptable"))
                .with_undecryptable_after(s.undecryptable_after)
                .with_media_hash_mismatches(build.counter("media_hash_mismatch"));
        }
        if s.private_attachment_urls {
            tracing::warn!("Attachments may be fetched from loopback and private addresses ([matrix] private_attachment_urls): anyone on a linked network can make the gateway read an internal service.");
            adapter = adapter.allow_private_media_urls();
        }
        Ok(BoxAdapter::new(adapter))
    }

    fn registers(&self) -> bool {
        true
    }

    fn registration(&self, section: &Section, links: &[Link]) -> Option<String> {
        let s: &MatrixSection = section.get()?;
        // Every alias the links name, in link order.
        let aliases: Vec<String> = links
            .iter()
            .flat_map(|l| &l.rooms)
            .filter(|r| r.network == section.network && r.room.as_str().starts_with('#'))
            .map(|r| r.room.as_str().to_owned())
            .collect();
        let mut yaml = registration_yaml(&s.config, &aliases);
        if s.encryption {
            yaml.push_str(crate::registration::ENCRYPTION_KEYS);
        }
        Some(yaml)
    }

    fn doctor<'a>(
        &'a self,
        section: &'a Section,
        checkup: Checkup<'a>,
        out: Out<'a, '_>,
    ) -> Checks<'a> {
        Box::pin(async move {
            if let Some(s) = section.get::<MatrixSection>() {
                crate::doctor::check(&s.config, checkup.rooms, checkup.networks, out).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn me() -> Vec<NetworkId> {
        vec![NetworkId::new(KEY)]
    }

    #[test]
    fn rooms_and_users_as_typed() {
        assert_eq!(
            Matrix.room("#a:m.test", &me()),
            Claim::Sure(Ok(RoomRef::new(KEY, "#a:m.test")))
        );
        assert!(matches!(
            Matrix.room("#a:m.test", &[]),
            Claim::Sure(Err(Refusal::Said(_)))
        ));
        assert!(matches!(
            Matrix.room("#a", &me()),
            Claim::Sure(Err(Refusal::Syntax(_)))
        ));
        assert_eq!(Matrix.room("a@b", &me()), Claim::No);
        assert_eq!(
            Matrix.user("@bob:m.test", &[]),
            Claim::Sure(Ok((UserRef::new(KEY, "@bob:m.test"), "@bob:m.test".into())))
        );
        assert_eq!(Matrix.user("bob@m.test", &[]), Claim::No);
        assert!(Matrix.config_room("#a:m.test", &[]).is_err());
        assert!(Matrix.config_room("#a:m.test", &me()).is_ok());
    }
}
