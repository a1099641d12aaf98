//! Files the server serves from its own binary: the JavaScript client
//! (`/client.js`), its types (`/client.d.ts`) and the admin page
//! (`/admin`), kept in
//! `runtime/assets/` and embedded at build time, so a page needs no build
//! step and no CDN.

use crate::transport::response::{Body, respond};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The JavaScript client, an ES module.
pub const CLIENT_JS: &str = include_str!("../../assets/client.js");

/// Its TypeScript declarations.
pub const CLIENT_DTS: &str = include_str!("../../assets/client.d.ts");

/// The admin page (it holds no data: it reads `/status`).
pub const ADMIN_HTML: &str = include_str!("../../assets/admin.html");

/// An embedded file: `content_type`, cacheable for a short while (a new
/// server version may change it), readable from any origin (it is public
/// code, and pages elsewhere import it).
pub fn serve(content_type: &'static str, text: &'static str) -> Response<Body> {
    let mut response = respond(StatusCode::OK, content_type, text);
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
