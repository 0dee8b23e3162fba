//! A git smart-HTTP server with Basic auth, standing in for Bitbucket.
//!
//! Each request runs `git http-backend` as a CGI program, so clones, fetches,
//! `ls-remote` and pushes speak the real protocol against real bare
//! repositories, and the login check SDP performs (a `git ls-remote` with
//! the user's credentials) meets a real 401.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use sdp_agents::git::Git;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::ReaderStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::TestbedError;

/// The realm git shows in its "Authentication failed" message.
const REALM: &str = "SDP test git";
/// A CGI header block larger than this is not git talking.
const MAX_CGI_HEADERS: usize = 64 * 1024;

/// A git smart-HTTP server with Basic auth on `127.0.0.1`, serving the bare
/// repositories under one directory. Stops when its shutdown token is
/// cancelled or when it is dropped.
pub struct GitServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for GitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitServer")
            .field("addr", &self.addr)
            .field("root", &self.state.root)
            .field("username", &self.state.username)
            .finish_non_exhaustive()
    }
}

struct ServerState {
    root: PathBuf,
    username: String,
    /// Behind a lock so a test can rotate it, as Bitbucket would after a
    /// password change.
    password: std::sync::RwLock<String>,
    requests: AtomicU64,
    auth_failures: AtomicU64,
}

impl GitServer {
    /// Serves the repositories under `repos_root` (`<name>.git`) on
    /// `127.0.0.1` at a free port, accepting only `username`/`password`.
    pub async fn start(
        repos_root: PathBuf,
        username: &str,
        password: &str,
        shutdown: CancellationToken,
    ) -> Result<GitServer, TestbedError> {
        let root = repos_root.canonicalize().map_err(TestbedError::io(format!(
            "git server root {}",
            repos_root.display()
        )))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(TestbedError::io("binding the git server"))?;
        let addr = listener
            .local_addr()
            .map_err(TestbedError::io("git server address"))?;
        let state = Arc::new(ServerState {
            root,
            username: username.to_owned(),
            password: std::sync::RwLock::new(password.to_owned()),
            requests: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        // A child token: dropping the server stops it without cancelling
        // whatever else the caller's token governs.
        let stop = shutdown.child_token();
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(serve_stop.cancelled_owned())
            .await;
            if let Err(e) = served {
                tracing::warn!("git server stopped: {e}");
            }
        });
        tracing::info!(%addr, "git server started");
        Ok(GitServer {
            addr,
            state,
            _stop_on_drop: stop.drop_guard(),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/<name>.git`
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the bare repositories.
    pub fn repos_root(&self) -> &Path {
        &self.state.root
    }

    /// From now on, accept only `password`: the user changed it in
    /// Bitbucket while SDP still holds the old one.
    pub fn set_password(&self, password: &str) {
        let mut current = self
            .state
            .password
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = password.to_owned();
    }

    /// Requests received so far, answered or refused.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests that carried credentials and were refused. git's first,
    /// anonymous probe of a protected URL is not counted: every client
    /// makes one.
    pub fn auth_failures(&self) -> u64 {
        self.state.auth_failures.load(Ordering::Relaxed)
    }
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let auth = {
        let password = state
            .password
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        check_auth(request.headers(), &state.username, &password)
    };
    match auth {
        Auth::Ok => {}
        Auth::Missing => return unauthorized(),
        Auth::Wrong => {
            state.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "git server refused credentials");
            return unauthorized();
        }
    }
    match run_cgi(&state, peer, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("git http-backend: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Auth {
    Ok,
    Missing,
    Wrong,
}

fn check_auth(headers: &HeaderMap, username: &str, password: &str) -> Auth {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Auth::Missing;
    };
    let decoded = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(token.trim())
        })
        .and_then(|token| base64::engine::general_purpose::STANDARD.decode(token).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((u, p)) if u == username && p == password => Auth::Ok,
        _ => Auth::Wrong,
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\""))],
        "authentication required\n",
    )
        .into_response()
}

/// Decodes a percent-encoded URL path for CGI's `PATH_INFO`, refusing
/// anything that could step outside the project root.
fn path_info(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {raw:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).map_err(|_| format!("path {raw:?} is not UTF-8"))?;
    if !path.starts_with('/')
        || path.contains('\0')
        || path.split('/').any(|segment| segment == "..")
    {
        return Err(format!("refused path {path:?}"));
    }
    Ok(path)
}

async fn run_cgi(
    state: &ServerState,
    peer: SocketAddr,
    request: Request,
) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let path = path_info(parts.uri.path())?;
    let headers = &parts.headers;
    let header_str = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    let mut cmd = Git::new("git", &state.root).command(["http-backend"]);
    cmd.stdin(Stdio::piped())
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("SERVER_SOFTWARE", "sdp-testbed")
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        // http-backend allows pushes only to an authenticated user.
        .env("REMOTE_USER", &state.username)
        .env("REMOTE_ADDR", peer.ip().to_string());
    if let Some(v) = header_str(header::CONTENT_TYPE) {
        cmd.env("CONTENT_TYPE", v);
    }
    // Without CONTENT_LENGTH (chunked uploads) http-backend reads to EOF.
    if let Some(v) = header_str(header::CONTENT_LENGTH) {
        cmd.env("CONTENT_LENGTH", v);
    }
    // git gzips large upload-pack requests; http-backend inflates them
    // itself when told.
    if let Some(v) = header_str(header::CONTENT_ENCODING) {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    // Protocol v2 is negotiated through this header.
    if let Some(v) = header_str(HeaderName::from_static("git-protocol")) {
        cmd.env("GIT_PROTOCOL", v);
    }

    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;

    // Fed from its own task: http-backend may start answering before it
    // has read everything, and neither side may wait on the other.
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin is the EOF http-backend waits for.
    });
    // Drained so a chatty backend never blocks on a full stderr pipe, and
    // reaped so no zombie is left once the response is streamed.
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        let status = child.wait().await;
        if !text.trim().is_empty() {
            tracing::debug!(?status, "git http-backend: {}", text.trim_end());
        }
    });

    let mut reader = BufReader::new(stdout);
    let (status, cgi_headers) = read_cgi_headers(&mut reader).await?;
    let mut response = Response::builder().status(status);
    for (name, value) in cgi_headers {
        response = response.header(name, value);
    }
    response
        .body(Body::from_stream(ReaderStream::new(reader)))
        .map_err(|e| format!("building response: {e}"))
}

/// Reads a CGI header block: `Name: value` lines up to an empty line, with
/// `Status: 404 Not Found` turned into the response status.
async fn read_cgi_headers<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<(StatusCode, Vec<(HeaderName, HeaderValue)>), String> {
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading http-backend output: {e}"))?;
        if n == 0 {
            return Err("http-backend ended before its headers did".into());
        }
        total += n;
        if total > MAX_CGI_HEADERS {
            return Err("http-backend headers too large".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("bad CGI status {value:?}"))?;
        } else {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("bad CGI header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("bad CGI header value {value:?}"))?;
            headers.push((name, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(user_pass);
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn basic_auth_is_checked_exactly() {
        assert_eq!(check_auth(&HeaderMap::new(), "u", "p"), Auth::Missing);
        assert_eq!(check_auth(&basic("u:p"), "u", "p"), Auth::Ok);
        assert_eq!(
            check_auth(&basic("u:p:x"), "u", "p:x"),
            Auth::Ok,
            "password may hold ':'"
        );
        assert_eq!(check_auth(&basic("u:wrong"), "u", "p"), Auth::Wrong);
        assert_eq!(check_auth(&basic("other:p"), "u", "p"), Auth::Wrong);
        assert_eq!(check_auth(&basic("u"), "u", ""), Auth::Wrong, "no colon");
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(check_auth(&bearer, "u", "p"), Auth::Wrong);
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(check_auth(&garbage, "u", "p"), Auth::Wrong);
    }

    #[test]
    fn unauthorized_names_the_realm() {
        let r = unauthorized();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"SDP test git\""
        );
    }

    #[test]
    fn path_info_decodes_and_refuses_escapes() {
        assert_eq!(
            path_info("/account.git/info/refs").unwrap(),
            "/account.git/info/refs"
        );
        assert_eq!(path_info("/a%20b.git/HEAD").unwrap(), "/a b.git/HEAD");
        assert!(path_info("/../etc/passwd").is_err());
        assert!(path_info("/x/%2e%2e/y").is_err());
        assert!(path_info("/x%00").is_err());
        assert!(path_info("/x%zz").is_err());
        assert!(path_info("/x%4").is_err());
        assert!(path_info("relative").is_err());
    }

    #[tokio::test]
    async fn cgi_headers_are_parsed_and_the_body_left_unread() {
        let raw: &[u8] = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nExpires: never\r\n\r\nbody bytes";
        let mut reader = BufReader::new(raw);
        let (status, headers) = read_cgi_headers(&mut reader).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].0, header::CONTENT_TYPE);
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "body bytes");
    }

    #[tokio::test]
    async fn cgi_output_without_headers_is_an_error() {
        for raw in [
            &b""[..],
            b"Content-Type: x\n",
            b"no colon here\n\n",
            b"Status: abc\n\n",
        ] {
            let mut reader = BufReader::new(raw);
            assert!(read_cgi_headers(&mut reader).await.is_err(), "{raw:?}");
        }
    }
}
