//! Poison items in the route loop, in process: an inbound event the store can never hold is
//! answered as handled (so Synapse stops resending it and archive positions move on) and
//! counted in `junction_refused_total`, while a backend failure (a full disk) still fails the
//! acknowledgement so nothing is lost. The next event is recorded either way.

#[path = "support/loop_rig.rs"]
mod loop_rig;

use junction_core::{Event, EventKind, MessageId, NetworkId, RoomRef, Sender, UserRef};
use junction_store::{Call, Faulty, Store, StoreError};
use std::sync::Arc;

/// A store whose `record_inbound` fails for remote ids starting with `poison` (as a record
/// that cannot be encoded) or `disk` (as a backend failure).
fn failing() -> Faulty {
    Faulty::new(|call| {
        let Call::RecordInbound(event) = call else {
            return None;
        };
        let id = event.remote_id.as_str();
        if id.starts_with("poison") {
            Some(StoreError::Codec("recursion limit exceeded".into()))
        } else if id.starts_with("disk") {
            Some(StoreError::Backend("No space left on device".into()))
        } else {
            None
        }
    })
}

fn message(remote: &str) -> Event {
    Event::new(
        RoomRef::new("xmpp", loop_rig::MUC),
        MessageId::new(remote),
        Sender::new(UserRef::new("xmpp", "mallory@xmpp.test"), "mallory"),
        1,
        EventKind::Message(junction_core::Message {
            body: junction_core::RichText::plain(format!("text of {remote}")),
            ..Default::default()
        }),
    )
}

#[tokio::test]
async fn poison_items_are_answered_as_handled_and_counted() -> anyhow::Result<()> {
    let store = Arc::new(failing());
    let rig = loop_rig::start("", store.clone())?;

    let answer = |remote: &'static str| rig.say(message(remote));
    assert_eq!(
        answer("poison-1").await?,
        Ok(()),
        "a poison item is answered as handled"
    );
    assert!(
        answer("disk-1").await?.is_err(),
        "a backend failure fails the acknowledgement"
    );
    assert_eq!(answer("ok-1").await?, Ok(()));
    assert_eq!(
        store.pending(&NetworkId::new("irc:local"))?.len(),
        1,
        "only the ordinary event was recorded"
    );

    let text = rig.metrics.render();
    assert!(
        text.contains("junction_refused_total{network=\"xmpp\",reason=\"unencodable\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("junction_errors_total{network=\"xmpp\",kind=\"store\"} 1\n"),
        "{text}"
    );
    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}
