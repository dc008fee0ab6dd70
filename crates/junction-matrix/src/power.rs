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
