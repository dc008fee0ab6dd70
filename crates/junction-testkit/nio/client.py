"""An encrypting Matrix client for the end-to-end tests, on matrix-nio and libolm (Debian's
python3-matrix-nio and python3-olm): it shares no code with the gateway.

    client.py HOMESERVER USER_ID PASSWORD ROOM_ID STORE_DIR

Logs in (a new device), joins ROOM_ID and syncs. Prints one JSON object per line on stdout:
  {"event": "ready", "device_id": ...}             once joined, synced and the room is encrypted
  {"event": "message", "room_id", "event_id", "sender", "body", "msgtype", "encrypted"}
                                                   per message, in any room it is in
  {"event": "undecrypted", "room_id", "event_id", "sender"}  per event it could not decrypt
  {"event": "file", "event_id", "sender", "body", "data"}  per encrypted file, downloaded
                                                   and decrypted (data: base64, or "error")
  {"event": "sent", "event_id": ...}               per line sent
  {"event": "room", "room_id": ...}                per direct chat made
  {"event": "error", "error": ...}
Reads commands on stdin, one per line: `send TEXT` sends TEXT encrypted into ROOM_ID;
`sendto ROOM TEXT` into ROOM; `edit EVENT_ID TEXT` replaces the message EVENT_ID with TEXT
(an encrypted m.replace); `dm USER [MEMBER ...]` makes an encrypted direct chat with USER
(as Element does) and answers once USER and every MEMBER joined it; `forge ROOM TEXT` sends
TEXT into ROOM encrypted with a Megolm session it never shares, which nobody can decrypt.
`reply EVENT_ID TEXT` answers EVENT_ID (m.in_reply_to), `react EVENT_ID KEY` reacts to it
(an encrypted m.reaction), `redact EVENT_ID` redacts it (in clear, as redactions are);
`file NAME BASE64` uploads the bytes encrypted and sends them into ROOM_ID as the file
NAME (an m.file whose content carries the key, as the spec's EncryptedFile).
"""

import asyncio
import base64
import io
import json
import logging
import os
import sys
from uuid import uuid4

import olm
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomEncryptedMedia,
    RoomMessageNotice,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
)
from nio.crypto import decrypt_attachment


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main():
    if os.environ.get("JUNCTION_TEST_NIO_LOG"):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    homeserver, user_id, password, room_id, store = sys.argv[1:6]
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(homeserver, user_id, store_path=store, config=config)

    async def on_message(room, event):
        say({
            "event": "message",
            "room_id": room.room_id,
            "event_id": event.event_id,
            "sender": event.sender,
            "body": event.body,
            "msgtype": event.source.get("content", {}).get("msgtype"),
            "encrypted": bool(getattr(event, "decrypted", False)),
        })

    async def on_undecrypted(room, event):
        say({
            "event": "undecrypted",
            "room_id": room.room_id,
            "event_id": event.event_id,
            "sender": event.sender,
        })

    async def on_file(room, event):
        if room.room_id != room_id:
            return
        seen = {"event": "file", "event_id": event.event_id, "sender": event.sender,
                "body": event.body}
        try:
            # Authenticated media: nio's own download uses the older, unauthenticated path.
            server, media_id = event.url[len("mxc://"):].split("/", 1)
            url = f"{homeserver}/_matrix/client/v1/media/download/{server}/{media_id}"
            headers = {"Authorization": f"Bearer {client.access_token}"}
            async with client.client_session.get(url, headers=headers) as resp:
                cipher = await resp.read()
            plain = decrypt_attachment(cipher, event.key["k"], event.hashes["sha256"], event.iv)
            seen["data"] = base64.b64encode(plain).decode()
        except Exception as e:  # noqa: BLE001 - reported to the test
            seen["error"] = repr(e)
        say(seen)

    client.add_event_callback(on_message, (RoomMessageText, RoomMessageNotice))
    client.add_event_callback(on_file, RoomEncryptedMedia)
    client.add_event_callback(on_undecrypted, MegolmEvent)

    resp = await client.login(password, device_name="nio test client")
    if not isinstance(resp, LoginResponse):
        say({"event": "error", "error": f"login: {resp}"})
        return
    await client.join(room_id)
    syncer = asyncio.ensure_future(client.sync_forever(timeout=1000, full_state=True))

    # Ready once the room is known, encrypted, and its members' keys queried.
    for _ in range(600):
        await asyncio.sleep(0.1)
        room = client.rooms.get(room_id)
        if room is not None and room.encrypted and not client.should_query_keys:
            break
    say({"event": "ready", "device_id": client.device_id})

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        line = line.rstrip("\n")
        target = room_id
        if line.startswith("dm "):
            await direct_chat(client, line[len("dm "):].split())
            continue
        if line.startswith("forge "):
            target, _, text = line[len("forge "):].partition(" ")
            await forge(client, target, text)
            continue
        etype = "m.room.message"
        if line.startswith("redact "):
            await redact(client, target, line[len("redact "):])
            continue
        if line.startswith("send "):
            content = {"msgtype": "m.text", "body": line[len("send "):]}
        elif line.startswith("reply "):
            replied, _, text = line[len("reply "):].partition(" ")
            content = {
                "msgtype": "m.text",
                "body": text,
                "m.relates_to": {"m.in_reply_to": {"event_id": replied}},
            }
        elif line.startswith("react "):
            reacted, _, key = line[len("react "):].partition(" ")
            etype = "m.reaction"
            content = {
                "m.relates_to": {"rel_type": "m.annotation", "event_id": reacted, "key": key}
            }
        elif line.startswith("sendto "):
            target, _, text = line[len("sendto "):].partition(" ")
            content = {"msgtype": "m.text", "body": text}
        elif line.startswith("edit "):
            edited, _, text = line[len("edit "):].partition(" ")
            content = {
                "msgtype": "m.text",
                "body": "* " + text,
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": edited},
            }
        elif line.startswith("file "):
            name, _, data = line[len("file "):].partition(" ")
            data = base64.b64decode(data)
            up, keys = await client.upload(
                io.BytesIO(data), "application/octet-stream", name, encrypt=True,
                filesize=len(data),
            )
            if not hasattr(up, "content_uri"):
                say({"event": "error", "error": f"upload: {up}"})
                continue
            content = {
                "msgtype": "m.file",
                "body": name,
                "info": {"mimetype": "text/plain", "size": len(data)},
                "file": dict(keys, url=up.content_uri),
            }
        else:
            say({"event": "error", "error": f"unknown command: {line}"})
            continue
        if os.environ.get("JUNCTION_TEST_NIO_LOG"):
            room = client.rooms.get(target)
            for u in (room.users if room else {}):
                for d in client.device_store.active_user_devices(u):
                    sess = client.olm.session_store.get(d.curve25519)
                    sys.stderr.write(f"nio: {u} {d.id} session={bool(sess)} deleted={d.deleted}\n")
        try:
            if client.should_query_keys:
                await client.keys_query()
            r = await client.room_send(
                target, etype, content, ignore_unverified_devices=True
            )
            if isinstance(r, RoomSendResponse):
                say({"event": "sent", "event_id": r.event_id})
            else:
                say({"event": "error", "error": f"send: {r}"})
        except Exception as e:  # noqa: BLE001 - reported to the test
            say({"event": "error", "error": f"send: {e!r}"})
    syncer.cancel()
    await client.close()


async def redact(client, room, event_id):
    """Redacts event_id in room (redactions are never encrypted)."""
    r = await client.room_redact(room, event_id, reason="test")
    if hasattr(r, "event_id"):
        say({"event": "sent", "event_id": r.event_id})
    else:
        say({"event": "error", "error": f"redact: {r}"})


async def direct_chat(client, users):
    """An encrypted direct chat with users[0], answered once every one of users joined it."""
    encryption = {
        "type": "m.room.encryption",
        "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
    }
    r = await client.room_create(
        is_direct=True,
        preset=RoomPreset.trusted_private_chat,
        invite=users[:1],
        initial_state=[encryption],
    )
    if not isinstance(r, RoomCreateResponse):
        say({"event": "error", "error": f"create: {r}"})
        return
    for _ in range(900):
        await asyncio.sleep(0.1)
        room = client.rooms.get(r.room_id)
        if room is None or not room.encrypted:
            continue
        joined = set(room.users) - set(room.invited_users)
        if all(u in joined for u in users):
            break
    else:
        say({"event": "error", "error": f"not everyone joined {r.room_id}"})
        return
    if client.should_query_keys:
        await client.keys_query()
    say({"event": "room", "room_id": r.room_id})


async def forge(client, room, text):
    """TEXT into ROOM under a Megolm session of its own that it never shares."""
    session = olm.OutboundGroupSession()
    payload = {
        "type": "m.room.message",
        "room_id": room,
        "content": {"msgtype": "m.text", "body": text},
    }
    content = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": client.olm.account.identity_keys["curve25519"],
        "device_id": client.device_id,
        "session_id": session.id,
        "ciphertext": session.encrypt(json.dumps(payload)),
    }
    method, path, data = Api.room_send(
        client.access_token, room, "m.room.encrypted", content, str(uuid4())
    )
    r = await client._send(RoomSendResponse, method, path, data, (room,))
    if isinstance(r, RoomSendResponse):
        say({"event": "sent", "event_id": r.event_id})
    else:
        say({"event": "error", "error": f"forge: {r}"})


asyncio.run(main())
