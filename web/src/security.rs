//! Sessions, CSRF and origin checks for the dashboard.
//!
//! The session cookie is `SameSite=Lax`, which already keeps it off
//! cross-site POSTs in current browsers; the checks here do not rely on that.
//! Every request that is not a GET or HEAD goes through [`guard`]: a request
//! from another origin is refused, and one with a session must carry that
//! session's CSRF token (hidden `_csrf` field or `X-CSRF-Token` header). The
//! token is an HMAC of the session token under a key made at start, so it
//! needs no storage, changes with each session and dies with it.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sdp_control::sessions::{self, Session};
use sha2::Sha256;

use crate::Web;
use crate::views::Viewer;

pub const CSRF_FIELD: &str = "_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    pub fn random() -> Self {
        CsrfKey(rand::random())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The CSRF token of the session whose cookie token is `session`.
    pub fn token(&self, session: &str) -> String {
        let mut mac = self.mac();
        mac.update(session.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time comparison, so response timing says nothing about how
    /// much of a guess was right.
    pub fn verify(&self, session: &str, given: &str) -> bool {
        let Ok(given) = hex::decode(given) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(session.as_bytes());
        mac.verify_slice(&given).is_ok()
    }
}

/// Whether a browser request comes from the page's own origin. Browsers send
/// `Origin` on every POST and WebSocket upgrade; its absence means a
/// non-browser client, which has no ambient cookie to abuse.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// A signed-in user; handlers that take it are reachable only with a valid
/// session, everyone else is sent to the sign-in page.
pub struct Authed {
    pub session: Arc<Session>,
    pub viewer: Viewer,
}

impl FromRequestParts<Web> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let token = sessions::token_from_headers(&parts.headers);
        let session = web.cp.session(&parts.headers);
        match (token, session) {
            (Some(token), Some(session)) => Ok(Authed {
                viewer: Viewer {
                    name: session.username().to_owned(),
                    csrf: web.csrf.token(&token),
                },
                session,
            }),
            _ => Err(to_login(&parts.headers)),
        }
    }
}

/// To the sign-in page; htmx requests are told to navigate there rather than
/// swap a whole login page into a fragment.
pub fn to_login(headers: &HeaderMap) -> Response {
    if headers.contains_key("hx-request") {
        return (StatusCode::UNAUTHORIZED, [("hx-redirect", "/login")]).into_response();
    }
    Redirect::to("/login").into_response()
}

fn forbidden(message: &'static str) -> Response {
    (StatusCode::FORBIDDEN, message).into_response()
}

/// Origin and CSRF checks on every state-changing request.
pub async fn guard(State(web): State<Web>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if !same_origin(req.headers()) {
        return forbidden("cross-origin request refused");
    }
    // Signing in has no session yet to bind a token to; signing out of no
    // session is harmless. Everything else needs both.
    let path = req.uri().path();
    if path == "/login" {
        return next.run(req).await;
    }
    let token = sessions::token_from_headers(req.headers());
    let Some(token) = token.filter(|_| web.cp.session(req.headers()).is_some()) else {
        if path == "/logout" {
            return next.run(req).await;
        }
        return to_login(req.headers());
    };
    if let Some(given) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if web.csrf.verify(&token, given) {
            next.run(req).await
        } else {
            forbidden("the form has expired: reload the page and try again")
        };
    }
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return forbidden("missing CSRF token");
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, web.cp.config().max_body_bytes).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let ok = fields
        .iter()
        .find(|(k, _)| k == CSRF_FIELD)
        .is_some_and(|(_, v)| web.csrf.verify(&token, v));
    if !ok {
        return forbidden("the form has expired: reload the page and try again");
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_session() {
        let key = CsrfKey::random();
        let t = key.token("session-a");
        assert!(key.verify("session-a", &t));
        assert!(!key.verify("session-b", &t));
        assert!(!key.verify("session-a", "zz"));
        assert!(!key.verify("session-a", ""));
        assert!(!CsrfKey::random().verify("session-a", &t));
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(HOST, "127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
