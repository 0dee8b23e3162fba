//! Sessions: login through the gateway agent (a real `git ls-remote` against
//! Bitbucket), the session cookie, and the lookup every request makes.
//!
//! Sessions live in memory only. The credentials stay here for the length of
//! the session, wiped when it ends, and leave only sealed to an agent's key.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sdp_contract::subjects::AgentOp;
use sdp_contract::{AuthOutcome, AuthRequest, Credentials, ErrorCode, Sealed};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::audit::AuditEntry;
use crate::bus::BusError;
use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "sdp_session";

pub const NO_GATEWAY: &str =
    "no gateway agent is connected: login needs one to check your Bitbucket credentials";
pub const REJECTED: &str = "Bitbucket rejected the username or password";
const SIGN_IN_FIRST: &str = "sign in first: this request carries no valid session";

/// Failed sign-ins allowed per user name, and per client address, within
/// [`FAILURE_WINDOW`]; more are refused without asking Bitbucket, so
/// guessing passwords is slow and cannot lock the account there.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Recent failed sign-ins, by user name and by address.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn keys(username: &str, addr: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{}", username.to_lowercase())];
        if let Some(a) = addr {
            keys.push(format!("addr:{a}"));
        }
        keys
    }

    /// Seconds until a sign-in is allowed again, if it is refused now.
    fn blocked(&self, username: &str, addr: Option<IpAddr>) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for key in Self::keys(username, addr) {
            let Some(times) = map.get_mut(&key) else {
                continue;
            };
            times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
            if times.len() >= MAX_FAILURES
                && let Some(oldest) = times.first()
            {
                let left = FAILURE_WINDOW.saturating_sub(now.duration_since(*oldest));
                wait = Some(wait.unwrap_or(0).max(left.as_secs().max(1)));
            }
        }
        map.retain(|_, times| !times.is_empty());
        wait
    }

    fn failed(&self, username: &str, addr: Option<IpAddr>) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in Self::keys(username, addr) {
            map.entry(key).or_default().push(Instant::now());
        }
    }

    fn succeeded(&self, username: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("user:{}", username.to_lowercase()));
    }
}

pub struct Session {
    username: String,
    credentials: Credentials,
    expires: Instant,
}

impl Session {
    pub fn username(&self) -> &str {
        &self.username
    }

    /// To seal to an agent; never to print or store.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

/// Who is signed in, as the dashboard sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionUser {
    pub username: String,
}

#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// Goes into the cookie; see [`ControlPlane::session_cookie`].
    pub token: String,
    pub user: SessionUser,
}

#[derive(Clone)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            map: Arc::default(),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session and returns its token: 32 random bytes, hex.
    pub fn create(&self, credentials: Credentials) -> String {
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let session = Session {
            username: credentials.username.clone(),
            credentials,
            expires: Instant::now() + self.ttl,
        };
        self.lock().insert(token.clone(), Arc::new(session));
        token
    }

    pub fn get(&self, token: &str) -> Option<Arc<Session>> {
        let mut map = self.lock();
        let session = map.get(token)?;
        if session.expires <= Instant::now() {
            map.remove(token);
            return None;
        }
        Some(session.clone())
    }

    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, s| s.expires > now);
    }

    /// Drops expired sessions (and so wipes their credentials) every minute,
    /// rather than only when their token comes back.
    pub async fn sweep_until(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }
}

/// The session token in the request's cookies, if any.
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The signed-in session of an API request; 401 without one.
pub struct CurrentSession(pub(crate) Arc<Session>);

impl FromRequestParts<ControlPlane> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        cp: &ControlPlane,
    ) -> Result<Self, Self::Rejection> {
        token_from_headers(&parts.headers)
            .and_then(|t| cp.inner.sessions.get(&t))
            .map(CurrentSession)
            .ok_or_else(|| ApiError::unauthorized(SIGN_IN_FIRST))
    }
}

fn check_credentials(c: &Credentials) -> Result<(), ApiError> {
    if c.username.trim().is_empty() || c.password.is_empty() {
        return Err(ApiError::bad_request(
            "username and password are both required",
        ));
    }
    if c.username.len() > 200 || c.username.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid username: at most 200 characters and no control characters",
        ));
    }
    Ok(())
}

fn login_error(e: BusError, auth_timeout: Duration) -> ApiError {
    match e {
        BusError::NoResponders { .. } => ApiError::unavailable(NO_GATEWAY),
        BusError::Disconnected => ApiError::unavailable(format!("{e}; try again shortly")),
        BusError::Agent(e) if e.code == ErrorCode::Unauthorized => ApiError::unauthorized(REJECTED),
        BusError::Agent(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "the gateway agent could not check the credentials: {}",
                e.message
            ),
        ),
        BusError::TimedOut { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the gateway agent did not answer within {} s; try again",
                auth_timeout.as_secs()
            ),
        ),
        BusError::Transport { .. } | BusError::Malformed { .. } => {
            tracing::warn!(error = %e, "login request to the gateway agent failed");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the gateway agent could not be asked: see the server log",
            )
        }
        BusError::Seal { .. } => ApiError::internal(e),
    }
}

impl ControlPlane {
    /// Checks `credentials` with the gateway agent and opens a session.
    pub async fn login(&self, credentials: Credentials) -> Result<LoginOutcome, ApiError> {
        self.login_from(credentials, None).await
    }

    /// [`ControlPlane::login`], with the client's address for rate limiting
    /// failed attempts per address as well as per user.
    pub async fn login_from(
        &self,
        credentials: Credentials,
        addr: Option<IpAddr>,
    ) -> Result<LoginOutcome, ApiError> {
        check_credentials(&credentials)?;
        let limiter = &self.inner.login_limiter;
        if let Some(wait) = limiter.blocked(&credentials.username, addr) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins: try again in {wait} s"),
            ));
        }
        let result = self.login_checked(credentials.clone()).await;
        match &result {
            Ok(_) => limiter.succeeded(&credentials.username),
            Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
                limiter.failed(&credentials.username, addr)
            }
            Err(_) => {}
        }
        result
    }

    async fn login_checked(&self, credentials: Credentials) -> Result<LoginOutcome, ApiError> {
        let cfg = &self.inner.config;
        let outcome: AuthOutcome = self
            .inner
            .bus
            .request_sealed(&cfg.gateway_node, AgentOp::Auth, cfg.auth_timeout, |key| {
                Ok(AuthRequest {
                    credentials: Sealed::seal(key, &credentials)?,
                })
            })
            .await
            .map_err(|e| {
                let e = login_error(e, cfg.auth_timeout);
                tracing::info!(username = %credentials.username, status = %e.status(), "sign-in refused");
                e
            })?;
        tracing::info!(username = %credentials.username, agent_user = %outcome.user, "signed in");
        let user = SessionUser {
            username: credentials.username.clone(),
        };
        let token = self.inner.sessions.create(credentials);
        Ok(LoginOutcome { token, user })
    }

    pub fn logout(&self, token: &str) {
        self.inner.sessions.remove(token);
    }

    /// The session of a request, from its cookie: what operations on the
    /// user's behalf (such as [`ControlPlane::create_deployment`]) take.
    pub fn session(&self, headers: &HeaderMap) -> Option<Arc<Session>> {
        self.inner.sessions.get(&token_from_headers(headers)?)
    }

    /// The signed-in user of a request, from its cookie.
    pub fn session_user(&self, headers: &HeaderMap) -> Option<SessionUser> {
        let session = self.session(headers)?;
        Some(SessionUser {
            username: session.username.clone(),
        })
    }

    /// `Set-Cookie` value that carries `token`.
    pub fn session_cookie(&self, token: &str) -> String {
        let cfg = &self.inner.config;
        format!(
            "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{}",
            cfg.session_ttl.as_secs(),
            if cfg.secure_cookies { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` value that removes the session cookie.
    pub fn expired_session_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{}",
            if self.inner.config.secure_cookies {
                "; Secure"
            } else {
                ""
            }
        )
    }
}

#[derive(Serialize)]
struct UserBody {
    user: SessionUser,
}

/// `POST /api/v1/session {username, password}`
pub async fn create(
    State(cp): State<ControlPlane>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(credentials): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let username: String = credentials.username.chars().take(200).collect();
    let result = cp
        .login_from(credentials, peer.map(|Extension(ConnectInfo(a))| a.ip()))
        .await;
    let entry = AuditEntry {
        action: "login",
        ..AuditEntry::default()
    };
    cp.audit(&username, entry, &result).await;
    let LoginOutcome { token, user } = result?;
    Ok((
        [(SET_COOKIE, cp.session_cookie(&token))],
        Json(UserBody { user }),
    )
        .into_response())
}

/// `GET /api/v1/session`: who is signed in.
pub async fn current(session: CurrentSession) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "user": { "username": session.0.username() } }))
}

/// `DELETE /api/v1/session`: ends the session (if any) and clears the cookie.
pub async fn delete(State(cp): State<ControlPlane>, headers: HeaderMap) -> Response {
    if let Some(token) = token_from_headers(&headers) {
        if let Some(session) = cp.inner.sessions.get(&token) {
            let entry = AuditEntry {
                action: "logout",
                ..AuditEntry::default()
            };
            cp.audit(session.username(), entry, &Ok::<(), ApiError>(()))
                .await;
        }
        cp.logout(&token);
    }
    (
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, cp.expired_session_cookie())],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use sdp_contract::AgentError;

    fn creds() -> Credentials {
        Credentials {
            username: "achmad".into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.create(creds());
        assert_eq!(token.len(), 64);
        assert_eq!(sessions.get(&token).unwrap().username(), "achmad");
        sessions.remove(&token);
        assert!(sessions.get(&token).is_none());

        let short = Sessions::new(Duration::ZERO);
        let token = short.create(creds());
        assert!(short.get(&token).is_none());
    }

    #[test]
    fn the_token_is_read_from_among_other_cookies() {
        let token = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {SESSION_COOKIE}={token}; x=y")).unwrap(),
        );
        assert_eq!(token_from_headers(&headers), Some(token));
        headers.insert(COOKIE, HeaderValue::from_static("sdp_session=../../etc"));
        assert_eq!(token_from_headers(&headers), None);
    }

    #[test]
    fn login_errors_say_what_happened() {
        let t = Duration::from_secs(60);
        let e = login_error(
            BusError::NoResponders {
                subject: "s".into(),
            },
            t,
        );
        assert_eq!(
            (e.status(), e.message()),
            (StatusCode::SERVICE_UNAVAILABLE, NO_GATEWAY)
        );
        let e = login_error(
            BusError::Agent(AgentError::new(ErrorCode::Unauthorized, "git said 401")),
            t,
        );
        assert_eq!(
            (e.status(), e.message()),
            (StatusCode::UNAUTHORIZED, REJECTED)
        );
    }

    #[test]
    fn failed_sign_ins_are_limited_per_user_and_per_address() {
        let l = LoginLimiter::default();
        let here: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert_eq!(l.blocked("achmad", here), None);
            l.failed("achmad", here);
        }
        assert!(l.blocked("Achmad", None).is_some(), "per user");
        assert!(l.blocked("someone", here).is_some(), "per address");
        assert_eq!(l.blocked("someone", None), None);
        l.succeeded("achmad");
        assert_eq!(l.blocked("achmad", None), None);
    }

    #[test]
    fn blank_or_odd_credentials_are_refused_before_asking_anyone() {
        let mut c = creds();
        c.password.clear();
        assert!(check_credentials(&c).is_err());
        let mut c = creds();
        c.username = "a\nb".into();
        assert!(check_credentials(&c).is_err());
        assert!(check_credentials(&creds()).is_ok());
    }
}
