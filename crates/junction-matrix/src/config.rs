//! The `[matrix]` section of bridges.toml, as the adapter receives it (already validated).

use junction_core::Secret;
use std::net::SocketAddr;

/// Matrix application-service settings.
#[derive(Clone, Debug)]
pub struct MatrixConfig {
    /// Client-server API base URL of the homeserver, e.g. `http://127.0.0.1:8008`.
    pub homeserver: String,
    /// The homeserver's server name, e.g. `matrix.test`.
    pub server_name: String,
    /// Where the gateway listens for the homeserver's pushes.
    pub listen: SocketAddr,
    /// Token the gateway uses towards the homeserver.
    pub as_token: Secret,
    /// Token the homeserver uses towards the gateway.
    pub hs_token: Secret,
    /// Localpart of the bot user (`sender_localpart`).
    pub bot: String,
    /// The appservice id in the registration (`junction` by default).
    pub id: String,
    /// Ghost localpart prefix (`_junction_` by default): ghosts are `@<prefix><network>_<name>`.
    pub user_prefix: String,
    /// Ghost display names carry their network's origin mark (`bob[i]`, `carol[x]`), so that
    /// a remote person cannot pass for a Matrix user (`[matrix] origin_marks`, default on).
    pub origin_marks: bool,
}
