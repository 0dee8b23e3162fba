//! The dashboard's routes against a real control plane (a real nats-server,
//! no agents): redirects without a session, the sign-in form and its error,
//! embedded assets and their caching, compression, origin and CSRF checks.
//! What needs a signed-in user is proven in a real browser
//! (`sdp/tests/browser.rs`), since signing in needs a gateway agent.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sdp_control::ControlPlane;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod support;
use support::send;

/// The control plane and what the tests use of it; the first element keeps
/// nats-server and the data directory alive.
async fn control() -> (support::Control, CancellationToken, ControlPlane) {
    let c = support::control().await;
    let (shutdown, cp) = (c.shutdown.clone(), c.cp.clone());
    (c, shutdown, cp)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login() {
    let (_control, shutdown, cp) = control().await;
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
    let (_control, shutdown, cp) = control().await;
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
async fn assets_are_embedded_and_cached_by_content_hash() {
    let (_control, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    let url = sdp_web::assets::url("app.css");
    let (status, headers, body) = send(&router, get(&url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(
        headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(body.contains("pre"));
    assert!(!body.contains("http"), "no external assets");
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();

    // A stale hash is not served, and the plain name revalidates.
    let (status, _, _) = send(&router, get("/assets/0000000000000000/app.css")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let req = Request::get("/assets/app.css")
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&router, req).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    for name in [
        "htmx.min.js",
        "ws.min.js",
        "htmx-LICENSE.txt",
        "htmx-ext-ws-LICENSE.txt",
    ] {
        let (status, _, _) = send(&router, get(&sdp_web::assets::url(name))).await;
        assert_eq!(status, StatusCode::OK, "{name}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn responses_are_compressed_and_carry_a_strict_csp() {
    let (_control, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    let req = Request::get(sdp_web::assets::url("htmx.min.js"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(
        body.len() < 25 * 1024,
        "htmx gzipped is {} bytes",
        body.len()
    );

    let (_, headers, _) = send(&router, get("/login")).await;
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn state_changes_need_a_session_and_the_same_origin() {
    let (_control, shutdown, cp) = control().await;
    let router = sdp_web::router(cp);
    let post = |path: &str, origin: Option<&str>| {
        let mut b = Request::post(path)
            .header(header::HOST, "127.0.0.1:8000")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::from("sandbox=qa&repository=account&branch=main"))
            .unwrap()
    };
    let (status, headers, _) = send(&router, post("/deploy", Some("http://127.0.0.1:8000"))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login");
    let (status, _, body) = send(&router, post("/deploy", Some("http://evil.example"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("cross-origin"), "{body}");
    let (status, _, _) = send(&router, post("/login", Some("http://evil.example"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A forged session cookie is no session either.
    let req = Request::post("/sandboxes/qa/delete")
        .header(header::COOKIE, "sdp_session=forged")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("_csrf=00"))
        .unwrap();
    let (status, headers, _) = send(&router, req).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login");
    for path in [
        "/sandboxes",
        "/nodes",
        "/audit",
        "/environments",
        "/templates",
        "/deploy",
        "/ws/live/deployments/x",
        "/sandboxes/qa/qr.svg",
    ] {
        let (status, headers, _) = send(&router, get(path)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(headers[header::LOCATION], "/login", "{path}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn the_dashboard_merges_with_the_api_router() {
    let (_control, shutdown, cp) = control().await;
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
