//! Long messages on IRC: a Matrix message longer than the IRC network's `max_lines` reaches
//! the channel as its first lines and a link, and the link, served by the gateway's `web`
//! listener, shows the whole message as plain text.

use super::lobby::{in_gateway, Lobby};
use junction_testkit::{free_port, unique};

/// The default `max_lines` of an IRC network.
const MAX_LINES: usize = 5;

/// A 12-line message from Matrix: IRC gets 4 lines and `(8 more lines: <url>)`, the URL
/// answers all 12 lines as text/plain, and a made-up paste id answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_matrix_message_reaches_irc_with_a_paste_link() -> anyhow::Result<()> {
    let port = free_port()?;
    let lobby =
        Lobby::start_with(|c| in_gateway(c, &format!("web = \"127.0.0.1:{port}\""))).await?;
    let tag = unique("long");
    let lines: Vec<String> = (1..=12)
        .map(|i| format!("{tag} line {i} <b>not markup</b>"))
        .collect();
    lobby
        .matrix
        .send_text(&lobby.room, &lines.join("\n"))
        .await?;

    let (nick, note) = lobby.irc_sees("more lines: ").await?;
    let base = format!("http://127.0.0.1:{port}/paste/");
    let url = note
        .split_once("more lines: ")
        .map(|(_, rest)| rest.trim_end_matches(')').to_owned())
        .unwrap_or_default();
    assert!(url.starts_with(&base), "{note:?}");
    assert!(
        note.starts_with(&format!("({} more lines: ", 12 - (MAX_LINES - 1))),
        "{note:?}"
    );

    // The sender's lines in the channel: the first max_lines - 1 of the message, then the
    // note, nothing more.
    let said: Vec<String> = lobby
        .irc
        .privmsgs_in(&lobby.channel)
        .into_iter()
        .filter(|(n, _)| n == &nick)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(said.len(), MAX_LINES, "{said:#?}");
    assert_eq!(&said[..MAX_LINES - 1], &lines[..MAX_LINES - 1], "{said:#?}");
    assert_eq!(said[MAX_LINES - 1], note);

    let page = reqwest::get(&url).await?;
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
    let text = page.text().await?;
    assert_eq!(text, lines.join("\n"));

    let missing = reqwest::get(format!("{base}{}", "0".repeat(32))).await?;
    assert_eq!(missing.status(), 404);

    // Nothing else of the message reaches IRC later.
    let after = unique("after");
    lobby.matrix.send_text(&lobby.room, &after).await?;
    lobby.irc_sees(&after).await?;
    let more = lobby
        .irc
        .privmsgs_in(&lobby.channel)
        .into_iter()
        .filter(|(_, t)| t.contains(&tag))
        .count();
    assert_eq!(more, MAX_LINES - 1);
    Ok(())
}
