//! The requests the crypto machine asks for, sent to the homeserver as the bot's device
//! (`?user_id=…&device_id=…`), and their answers handed back to the machine.

use super::{machine_err, Crypto, CryptoError};
use crate::connection::Method;
use crate::ids::path_segment;
use matrix_sdk_crypto::types::requests::{AnyIncomingResponse, AnyOutgoingRequest};
use ruma::api::IncomingResponse;
use serde_json::{json, Value};

impl Crypto {
    /// The masquerade query of the bot's device.
    pub(super) fn as_device(&self) -> Vec<(&'static str, String)> {
        vec![
            ("user_id", self.bot.to_string()),
            ("device_id", self.device.to_string()),
        ]
    }

    /// Sends every request the machine has for the homeserver and hands back the answers.
    pub async fn send_outgoing(&self) -> Result<(), CryptoError> {
        let _one = self.sending.lock().await;
        self.send_outgoing_locked().await
    }

    pub(super) async fn send_outgoing_locked(&self) -> Result<(), CryptoError> {
        // Bounded: each round marks its requests sent; a machine that keeps asking (keys
        // upload in batches) gets a few rounds.
        for _ in 0..8 {
            let requests = self
                .machine
                .outgoing_requests()
                .await
                .map_err(machine_err)?;
            if requests.is_empty() {
                return Ok(());
            }
            for r in requests {
                self.send_request(r.request_id(), r.request()).await?;
            }
        }
        Ok(())
    }

    /// Sends one request as the bot's device and marks it sent.
    pub(super) async fn send_request(
        &self,
        id: &ruma::TransactionId,
        request: &AnyOutgoingRequest,
    ) -> Result<(), CryptoError> {
        use ruma::api::client::keys::{claim_keys, get_keys, upload_keys, upload_signatures};
        use ruma::api::client::to_device::send_event_to_device;
        let q = self.as_device();
        match request {
            AnyOutgoingRequest::KeysUpload(r) => {
                // Absent keys are left out: Synapse refuses `null` for them.
                let mut body = json!({
                    "one_time_keys": r.one_time_keys,
                    "fallback_keys": r.fallback_keys,
                });
                if let Some(keys) = &r.device_keys {
                    body["device_keys"] = serde_json::to_value(keys).map_err(machine_err)?;
                }
                let v = self
                    .post("/_matrix/client/v3/keys/upload", &q, body)
                    .await?;
                let resp: upload_keys::v3::Response = parse(v)?;
                self.mark(id, &resp).await
            }
            AnyOutgoingRequest::KeysQuery(r) => {
                let body = json!({"device_keys": r.device_keys, "timeout": 10_000});
                let v = self.post("/_matrix/client/v3/keys/query", &q, body).await?;
                let resp: get_keys::v3::Response = parse(v)?;
                self.mark(id, &resp).await
            }
            AnyOutgoingRequest::KeysClaim(r) => {
                let body = json!({"one_time_keys": r.one_time_keys, "timeout": 10_000});
                let v = self.post("/_matrix/client/v3/keys/claim", &q, body).await?;
                let resp: claim_keys::v3::Response = parse(v)?;
                self.mark(id, &resp).await
            }
            AnyOutgoingRequest::ToDeviceRequest(r) => self.send_to_device(r).await,
            AnyOutgoingRequest::SignatureUpload(r) => {
                let body = serde_json::to_value(&r.signed_keys).map_err(machine_err)?;
                let v = self
                    .post("/_matrix/client/v3/keys/signatures/upload", &q, body)
                    .await?;
                let resp: upload_signatures::v3::Response = parse(v)?;
                self.mark(id, &resp).await
            }
            AnyOutgoingRequest::RoomMessage(_) => {
                // In-room verification: the gateway's device verifies nobody.
                let resp = send_event_to_device::v3::Response::new();
                self.mark(id, &resp).await
            }
        }
    }

    pub(super) async fn send_to_device(
        &self,
        r: &matrix_sdk_crypto::types::requests::ToDeviceRequest,
    ) -> Result<(), CryptoError> {
        let path = format!(
            "/_matrix/client/v3/sendToDevice/{}/{}",
            path_segment(&r.event_type.to_string()),
            path_segment(r.txn_id.as_str())
        );
        let body = json!({ "messages": r.messages });
        self.client
            .request(Method::PUT, &path, &self.as_device(), Some(body))
            .await?;
        let resp = ruma::api::client::to_device::send_event_to_device::v3::Response::new();
        self.mark(&r.txn_id, &resp).await
    }

    async fn post(
        &self,
        path: &str,
        q: &[(&'static str, String)],
        body: Value,
    ) -> Result<Value, CryptoError> {
        Ok(self
            .client
            .request(Method::POST, path, q, Some(body))
            .await?)
    }

    async fn mark<'a>(
        &self,
        id: &ruma::TransactionId,
        resp: impl Into<AnyIncomingResponse<'a>>,
    ) -> Result<(), CryptoError> {
        self.machine
            .mark_request_as_sent(id, resp)
            .await
            .map_err(machine_err)
    }
}

/// A ruma response from the homeserver's JSON answer.
fn parse<R: IncomingResponse>(v: Value) -> Result<R, CryptoError> {
    let body = serde_json::to_vec(&v).map_err(machine_err)?;
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body)
        .map_err(machine_err)?;
    R::try_from_http_response(resp).map_err(machine_err)
}
