//! The dashboard's routes against a real control plane (a real nats-server,
//! no agents): redirects without a session, the sign-in form and its error,
//! the embedded stylesheet.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sdp_control::{ControlConfig, ControlPlane};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn control() -> (Nats, tempfile::TempDir, CancellationToken, ControlPlane) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nats = Nats(
        Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match async_nats::connect(format!("nats://127.0.0.1:{port}")).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("nats-server did not start: {e}"),
        }
    };
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(
        client,
        ControlConfig::new(data.path().to_path_buf()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (nats, data, shutdown, cp)
}

async fn send(
    router: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, header::HeaderMap, String) {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login() {
    let (_nats, _data, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    for path in ["/", "/deployments/some-id"] {
        let (status, headers, _) = send(&router, get(path)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers[header::LOCATION], "/login");
    }
    let (status, _, body) = send(&router, get("/login")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"action="/login""#));
    shutdown.cancel();
}

#[tokio::test]
async fn a_failed_sign_in_shows_the_form_again_with_the_reason() {
    let (_nats, _data, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    let req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("username=achmad&password=hunter2-secret"))
        .unwrap();
    let (status, headers, body) = send(&router, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("no gateway agent is connected"), "{body}");
    assert!(body.contains(r#"value="achmad""#));
    assert!(!body.contains("hunter2-secret"));

    let req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("username=achmad"))
        .unwrap();
    let (status, _, body) = send(&router, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("enter your Bitbucket username and password"));

    let req = Request::post("/logout").body(Body::empty()).unwrap();
    let (status, headers, _) = send(&router, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_stylesheet_is_embedded() {
    let (_nats, _data, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    let (status, headers, body) = send(&router, get("/assets/app.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(body.contains("pre.log"));
    assert!(!body.contains("http"), "no external assets");
    shutdown.cancel();
}

#[tokio::test]
async fn the_dashboard_merges_with_the_api_router() {
    let (_nats, _data, shutdown, cp) = control().await;
    let router = cp.api_router().merge(sdp_web::router(cp.clone()));
    let (status, headers, _) = send(&router, get("/")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login");
    let (status, _, body) = send(&router, get("/api/v1/nodes")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("\"error\""), "{body}");
    let (status, _, body) = send(&router, get("/api/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no such API endpoint"), "{body}");
    let (status, _, _) = send(&router, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    shutdown.cancel();
}
