//! Who is a moderator of a Matrix room, read from its `m.room.power_levels`: the origin side
//! of the rule that only a moderator's removal of someone else's message crosses, and only
//! a moderator's topic is set elsewhere with the gateway's own power.

use junction_core::EventKind;
use serde_json::Value;

/// The spec's defaults when a room's power levels leave a key out.
const DEFAULT_REDACT: i64 = 50;
const DEFAULT_STATE: i64 = 50;
const DEFAULT_USER: i64 = 0;

/// A level as the spec allows it: an integer, or (older rooms) a string holding one.
fn level(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The power level of `user` under `levels` (the content of `m.room.power_levels`).
pub fn user_level(levels: &Value, user: &str) -> i64 {
    level(levels.get("users").and_then(|u| u.get(user)))
        .or_else(|| level(levels.get("users_default")))
        .unwrap_or(DEFAULT_USER)
}

/// True when `user` acts as a moderator in doing `kind`: for a redaction, a level at least
/// the room's `redact` level; for a topic, at least the level the topic needs and at least
/// the `redact` level (a room open to anyone's topic makes nobody a moderator). `None`
/// (the room has no power levels, or they could not be read) is no moderator.
pub fn is_moderator(levels: Option<&Value>, user: &str, kind: &EventKind) -> bool {
    let Some(levels) = levels else { return false };
    let redact = level(levels.get("redact")).unwrap_or(DEFAULT_REDACT);
    let needed = match kind {
        EventKind::Redact { .. } => redact,
        EventKind::Topic { .. } => {
            let topic = level(levels.get("events").and_then(|e| e.get("m.room.topic")))
                .or_else(|| level(levels.get("state_default")))
                .unwrap_or(DEFAULT_STATE);
            topic.max(redact)
        }
        _ => return false,
    };
    user_level(levels, user) >= needed
}

/// True when `user` created the room under a room version whose creators hold power above
/// every level (room version 12 and later, MSC4289): the sender of `m.room.create` and its
/// `additional_creators`, none of whom is listed in `m.room.power_levels`. `create` is the
/// whole `m.room.create` event. Earlier versions list their creator among the users, so this
/// is false for them.
pub fn is_privileged_creator(create: &Value, user: &str) -> bool {
    let content = create.get("content").unwrap_or(&Value::Null);
    let version = content
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1");
    // Versions 1 to 11 (and unknown experimental ones) give creators no special power.
    let privileged = version.parse::<u32>().is_ok_and(|v| v >= 12);
    if !privileged {
        return false;
    }
    create.get("sender").and_then(Value::as_str) == Some(user)
        || content
            .get("additional_creators")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(user)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::MessageId;
    use serde_json::json;

    fn redact() -> EventKind {
        EventKind::Redact {
            target: MessageId::new("$m"),
            reason: None,
        }
    }

    #[test]
    fn creators_of_version_12_rooms_are_privileged() {
        let create = |version: &str| {
            json!({"type": "m.room.create", "sender": "@alice:hs",
                   "content": {"room_version": version, "additional_creators": ["@carol:hs"]}})
        };
        assert!(is_privileged_creator(&create("12"), "@alice:hs"));
        assert!(is_privileged_creator(&create("12"), "@carol:hs"));
        assert!(!is_privileged_creator(&create("12"), "@bob:hs"));
        // Earlier versions list the creator among the power levels' users instead.
        assert!(!is_privileged_creator(&create("11"), "@alice:hs"));
        assert!(!is_privileged_creator(
            &create("org.example.x"),
            "@alice:hs"
        ));
        assert!(!is_privileged_creator(&json!({}), "@alice:hs"));
    }

    #[test]
    fn moderators_are_read_from_power_levels() {
        let levels = json!({
            "users": {"@alice:hs": 100, "@mod:hs": "50", "@bob:hs": 10},
            "users_default": 0,
            "redact": 50,
            "events": {"m.room.topic": 0}
        });
        let l = Some(&levels);
        assert!(is_moderator(l, "@alice:hs", &redact()));
        assert!(is_moderator(l, "@mod:hs", &redact()));
        assert!(!is_moderator(l, "@bob:hs", &redact()));
        assert!(!is_moderator(l, "@nobody:hs", &redact()));
        // Anyone may set this room's topic, which makes nobody a moderator.
        let topic = EventKind::Topic { text: "t".into() };
        assert!(!is_moderator(l, "@bob:hs", &topic));
        assert!(is_moderator(l, "@mod:hs", &topic));
        // Edits, and rooms whose power levels are unknown, never are.
        let edit = EventKind::Edit {
            target: MessageId::new("$m"),
            body: junction_core::RichText::plain("x"),
        };
        assert!(!is_moderator(l, "@alice:hs", &edit));
        assert!(!is_moderator(None, "@alice:hs", &redact()));
    }

    #[test]
    fn spec_defaults_apply_when_keys_are_missing() {
        let levels = json!({"users": {"@mod:hs": 50}, "users_default": 60});
        assert!(is_moderator(Some(&levels), "@mod:hs", &redact()));
        // users_default 60 is at least the default redact level 50.
        assert!(is_moderator(Some(&levels), "@anyone:hs", &redact()));
        let strict = json!({"redact": 75, "users": {"@mod:hs": 50}});
        assert!(!is_moderator(Some(&strict), "@mod:hs", &redact()));
        assert!(!is_moderator(Some(&json!([])), "@mod:hs", &redact()));
    }
}
