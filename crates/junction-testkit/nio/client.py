"""An encrypting Matrix client for the end-to-end tests, on matrix-nio and libolm (Debian's
python3-matrix-nio and python3-olm): it shares no code with the gateway.

    client.py HOMESERVER USER_ID PASSWORD ROOM_ID STORE_DIR

Logs in (a new device), joins ROOM_ID and syncs. Prints one JSON object per line on stdout:
  {"event": "ready", "device_id": ...}             once joined, synced and the room is encrypted
  {"event": "message", "event_id", "sender", "body", "msgtype", "encrypted"}  per room message
  {"event": "file", "event_id", "sender", "body", "data"}  per encrypted file, downloaded
                                                   and decrypted (data: base64, or "error")
  {"event": "undecrypted", "event_id", "sender"}   per event it could not decrypt
  {"event": "sent", "event_id": ...}               per line sent
  {"event": "error", "error": ...}
Reads commands on stdin, one per line: `send TEXT` sends TEXT encrypted into the room;
`edit EVENT_ID TEXT` replaces the message EVENT_ID with TEXT (an encrypted m.replace);
`file NAME BASE64` uploads the bytes encrypted and sends them as the file NAME (an m.file
whose content carries the key, as the spec's EncryptedFile).
"""

import asyncio
import base64
import io
import json
import logging
import os
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MegolmEvent,
    RoomEncryptedMedia,
    RoomMessageNotice,
    RoomMessageText,
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
        if room.room_id != room_id:
            return
        say({
            "event": "message",
            "event_id": event.event_id,
            "sender": event.sender,
            "body": event.body,
            "msgtype": event.source.get("content", {}).get("msgtype"),
            "encrypted": bool(getattr(event, "decrypted", False)),
        })

    async def on_undecrypted(room, event):
        if room.room_id != room_id:
            return
        say({"event": "undecrypted", "event_id": event.event_id, "sender": event.sender})

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
        if line.startswith("send "):
            content = {"msgtype": "m.text", "body": line[len("send "):]}
        elif line.startswith("edit "):
            target, _, text = line[len("edit "):].partition(" ")
            content = {
                "msgtype": "m.text",
                "body": "* " + text,
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": target},
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
            room = client.rooms.get(room_id)
            for u in (room.users if room else {}):
                for d in client.device_store.active_user_devices(u):
                    sess = client.olm.session_store.get(d.curve25519)
                    sys.stderr.write(f"nio: {u} {d.id} session={bool(sess)} deleted={d.deleted}\n")
        try:
            if client.should_query_keys:
                await client.keys_query()
            r = await client.room_send(
                room_id, "m.room.message", content, ignore_unverified_devices=True
            )
            if isinstance(r, RoomSendResponse):
                say({"event": "sent", "event_id": r.event_id})
            else:
                say({"event": "error", "error": f"send: {r}"})
        except Exception as e:  # noqa: BLE001 - reported to the test
            say({"event": "error", "error": f"send: {e!r}"})
    syncer.cancel()
    await client.close()


asyncio.run(main())
