//! The HTTP side of the one port: routes (`/ws`, `/healthz`, `/status`,
//! `/metrics`, `POST /api`, `/admin`, `/client.js`, `/client.d.ts`,
//! `POST /token`, static files) and the WebSocket upgrade, including the
//! token check on the handshake.

use crate::auth::{Handshake, TokenError};
use crate::config::AuthStep;
use crate::lifecycle;
use crate::rpc::session::Session;
use crate::rpc::session::next_conn_id;
use crate::state::ServerState;
use crate::transport::assets;
use crate::transport::connection::{self, Outbound, Speaks};
use crate::transport::read_ahead::ReadAhead;
pub use crate::transport::response::Body;
use crate::transport::response::{respond, text};
use crate::transport::websocket::WebSocket;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a request handler needs besides the request.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Shared server state.
    pub state: Arc<ServerState>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Tracks upgraded connections so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The peer of the TCP connection these routes serve, once known.
    pub remote: Option<SocketAddr>,
}

impl Routes {
    /// Answers one HTTP request.
    pub async fn handle(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        // HEAD is GET without the body (hyper leaves the body out).
        let method = if req.method() == Method::HEAD && req.uri().path() != "/ws" {
            Method::GET
        } else {
            req.method().clone()
        };
        let response = match (&method, req.uri().path()) {
            (&Method::GET, "/ws") => self.upgrade(req, Speaks::JsonRpc).await,
            (&Method::GET, "/autobahn") if self.state.config.conformance_echo => {
                self.upgrade(req, Speaks::Echo).await
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/status") => match self.admin_check(&req) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/json",
                    crate::status::render(&self.state),
                ),
                Err(refused) => *refused,
            },
            (&Method::POST, "/api") => match self.admin_check(&req) {
                Ok(()) => crate::api::answer(&self.state, req).await,
                Err(refused) => *refused,
            },
            (&Method::GET, "/metrics") => {
                let allowed = if self.state.config.metrics_public {
                    Ok(())
                } else {
                    self.admin_check(&req)
                };
                match allowed {
                    Ok(()) => respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        crate::metrics::global().render(&self.state),
                    ),
                    Err(refused) => *refused,
                }
            }
            (&Method::GET, "/admin") => {
                assets::serve("text/html; charset=utf-8", assets::ADMIN_HTML)
            }
            (&Method::POST, "/token") if self.state.config.token_endpoint => {
                let client = self.remote.map(|peer| {
                    crate::transport::forwarded::client_address(
                        peer,
                        req.headers(),
                        &self.state.config.trusted_proxies,
                    )
                });
                crate::transport::token_endpoint::answer(&self.state, req, client).await
            }
            (&Method::GET, "/client.js") => {
                assets::serve("text/javascript; charset=utf-8", assets::CLIENT_JS)
            }
            (&Method::GET, "/client.d.ts") => {
                assets::serve("application/typescript; charset=utf-8", assets::CLIENT_DTS)
            }
            (_, "/api") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            (
                _,
                "/ws" | "/healthz" | "/status" | "/metrics" | "/admin" | "/client.js"
                | "/client.d.ts",
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
            (&Method::GET, path) => match &self.state.config.static_dir {
                Some(folder) => match crate::transport::static_files::serve(folder, path).await {
                    Some(response) => response,
                    None => text(StatusCode::NOT_FOUND, "not found\n"),
                },
                None => not_found(),
            },
            _ => not_found(),
        };
        Ok(response)
    }

    /// The 401 for a handshake whose token was refused (logged, counted,
    /// and told to plugins that listen).
    fn refuse_token(&self, conn_id: u64, e: &TokenError) -> Response<Body> {
        tracing::info!(conn = conn_id, "handshake refused: {e}");
        crate::metrics::global().auth_failure(e.kind());
        lifecycle::emit(
            &self.state.registry,
            lifecycle::AUTH_FAILURE,
            conn_id,
            None,
            || serde_json::json!({"reason": e.to_string(), "via": "handshake"}),
        );
        let body = serde_json::json!({"code": -32001, "message": format!("token refused: {e}")})
            .to_string();
        refused_handshake(respond(StatusCode::UNAUTHORIZED, "application/json", body))
    }

    /// Whether the request may use the admin paths (`/status`, `/api`,
    /// `/metrics`): the admin token, or with none set a client on this
    /// machine (as forwarded by a trusted proxy: a proxy on this machine
    /// does not make its clients local).
    fn admin_check(&self, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
        let client = self.remote.map(|peer| {
            crate::transport::forwarded::client_address(
                peer,
                req.headers(),
                &self.state.config.trusted_proxies,
            )
        });
        crate::transport::admin::check(
            req.headers(),
            client,
            self.state.config.admin_token.as_ref(),
        )
    }

    async fn upgrade(self, mut req: Request<Incoming>, speaks: Speaks) -> Response<Body> {
        let headers = req.headers();
        let key = match check_upgrade(headers) {
            Ok(key) => key,
            Err(response) => return refused_handshake(*response),
        };
        if let Err(response) = crate::transport::handshake::admit(headers, &self.state) {
            return refused_handshake(*response);
        }
        // Hold a connection slot from here on, so concurrent upgrades
        // cannot pass `max_connections` between the check and the upgrade.
        let Some(counted) = self.state.reserve_connection() else {
            return refused_handshake(crate::transport::handshake::at_capacity());
        };
        let conn_id = next_conn_id();
        // Behind a trusted proxy, the client it names; else the TCP peer.
        let client = self.remote.map(|peer| {
            crate::transport::forwarded::client_address(
                peer,
                headers,
                &self.state.config.trusted_proxies,
            )
        });
        // Only an auth plugin reads the headers and the query (on the
        // handshake and on later `rpc.auth`s): without one, an idle
        // connection keeps neither (the query holds the token).
        let for_plugin = self.state.config.auth_chain.contains(&AuthStep::Plugin);
        let handshake = Arc::new(Handshake {
            headers_json: if for_plugin {
                headers_json(headers)
            } else {
                String::new()
            },
            query: req.uri().query().filter(|_| for_plugin).map(str::to_owned),
            remote_addr: client.map(|a| a.to_string()).unwrap_or_default(),
        });
        let header = bearer_token(headers);
        let token = header
            .as_ref()
            .ok()
            .copied()
            .flatten()
            .or_else(|| query_token(req.uri().query()));
        let verdict = self
            .state
            .auth
            .authenticate(token, &handshake, conn_id, &self.state.registry)
            .await;
        // An `Authorization` header that is not a bearer token is fine if
        // the connection signs in anyway (with `?token=`, or an auth plugin
        // that reads that scheme); otherwise the client sent credentials
        // nobody took, and is told so rather than left anonymous.
        let verdict = match (header, verdict) {
            (Err(unreadable), Ok(None)) => Err(unreadable),
            (_, verdict) => verdict,
        };
        let identity = match verdict {
            Ok(identity) => identity.map(Arc::new),
            Err(e) => return self.refuse_token(conn_id, &e),
        };
        let anonymous = match identity {
            Some(_) => None,
            None => match self.state.anonymous.take(client.map(|a| a.ip())) {
                Ok(slot) => Some(slot),
                Err(full) => {
                    tracing::debug!(conn = conn_id, "upgrade refused: {full}");
                    return refused_handshake(crate::transport::handshake::anonymous_full(&full));
                }
            },
        };
        let accept = derive_accept_key(key.as_bytes());
        let outbound = Outbound::open(
            &self.state,
            conn_id,
            identity.clone(),
            &handshake.remote_addr,
        );
        // A revocation made since the token was checked may have looked
        // for its connections before this one was in the hub.
        if let Some(signed_in) = &identity
            && self
                .state
                .auth
                .revocations()
                .is_revoked(signed_in, crate::auth::now_secs())
        {
            self.state.hub.unregister(conn_id);
            return self.refuse_token(conn_id, &TokenError::Revoked);
        }
        let state = Arc::clone(&self.state);
        let shutdown = self.shutdown.clone();
        let upgrade = hyper::upgrade::on(&mut req);
        let tracker = self.tracker.clone();
        // Two tasks: this one finishes the upgrade and ends; the connection
        // then runs as a task of its own, as large as it needs to be and no
        // larger (a future that awaited it would also hold this one's state).
        self.tracker.spawn(async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    state.hub.unregister(conn_id);
                    state.broker.leave_all(conn_id).await;
                    return;
                }
            };
            let config = ws_config(state.config.max_message_bytes);
            let ws = WebSocket::server(ReadAhead::new(TokioIo::new(upgraded)), config);
            crate::metrics::global().connection_opened();
            let user = identity.as_ref().map(|i| Arc::clone(&i.user));
            lifecycle::emit(
                &state.registry,
                lifecycle::CONNECT,
                conn_id,
                user.as_ref(),
                || serde_json::json!({"remote_addr": handshake.remote_addr}),
            );
            if user.is_some() {
                lifecycle::emit(
                    &state.registry,
                    lifecycle::AUTH_SUCCESS,
                    conn_id,
                    user.as_ref(),
                    || serde_json::json!({"via": "handshake"}),
                );
            }
            let session = Session::new(
                conn_id,
                identity,
                anonymous,
                handshake,
                state.config.max_inflight_per_connection,
                state.auth.leeway(),
                crate::rpc::rates::ConnectionRates::new(&state.config),
            );
            let connection =
                connection::serve(ws, Arc::clone(&state), session, outbound, shutdown, speaks);
            tracker.spawn(futures_util::FutureExt::map(connection, move |ended| {
                drop(counted);
                lifecycle::emit(
                    &state.registry,
                    lifecycle::DISCONNECT,
                    conn_id,
                    ended.user.as_ref(),
                    || serde_json::json!({"reason": ended.reason}),
                );
            }));
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        response
    }
}

/// The request's headers as a JSON object of lower-case name to value,
/// repeated headers joined with ", " (what an auth plugin sees).
/// The 404 for a path no route takes (with no static folder).
fn not_found() -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        "not found: this server offers GET /ws, /healthz, /status, /metrics, /admin, /client.js, /client.d.ts and POST /api\n",
    )
}

pub(crate) fn headers_json(headers: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    serde_json::Value::Object(map).to_string()
}

/// Marks a refused handshake's response to close the connection: the
/// client asked to switch protocols, so nothing else will follow on it.
fn refused_handshake(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// tungstenite's read buffer per connection (see [`ws_config`]).
const READ_BUFFER_BYTES: usize = 256;

/// The WebSocket settings for every connection: small buffers for many
/// small JSON messages, and hard caps so one peer cannot grow memory. The
/// read buffer is held by every idle connection; reads from the socket go
/// through [`ReadAhead`] in large gulps, so tungstenite's own buffer only
/// needs to hold a frame or two (a larger frame grows it while it is read).
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(2 * max_message_bytes + 64 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Checks the upgrade headers (RFC 6455 section 4.2.1) and returns the key.
fn check_upgrade(headers: &HeaderMap) -> Result<String, Box<Response<Body>>> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Box::new(text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an Upgrade: websocket request\n",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: use 13\n",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(response));
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "send exactly one Sec-WebSocket-Key header\n",
        )));
    };
    match key.to_str() {
        Ok(key) if is_valid_key(key) => Ok(key.to_owned()),
        _ => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "invalid Sec-WebSocket-Key: it must be 16 random bytes in base64 (24 characters)\n",
        ))),
    }
}

/// RFC 6455 section 4.1: the key is a random 16-byte value, base64-encoded.
fn is_valid_key(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// The token of an `Authorization: Bearer <token>` header; `Ok(None)`
/// without the header. Any other `Authorization` (another scheme, no
/// token, several headers) is an error, which refuses the upgrade unless
/// the connection signs in another way: a client that sent credentials
/// must never end up anonymous without being told.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, TokenError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let token = match (values.next(), value.to_str()) {
        (None, Ok(value)) => value.split_once(' ').and_then(|(scheme, token)| {
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        }),
        _ => None,
    };
    token.map(Some).ok_or(TokenError::BadAuthorizationHeader)
}

/// The `token` query parameter. JWTs use only URL-safe characters, so no
/// percent-decoding is needed for a well-formed one.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}
