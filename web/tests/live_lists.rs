//! The live lists over a real socket: a real nats-server, a real control
//! plane, the dashboard served on a loopback port, and `support::gateway`
//! standing in for the gateway agent so that signing in works. A page that connects gets a snapshot,
//! then a new frame only when something it shows changed.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{AgentError, AgentKeys, ErrorCode, NodeKind, Presence, Reply, encode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

mod support;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Site {
    control: support::Control,
    router: axum::Router,
    host: String,
    cookie: String,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.control.shutdown.cancel();
    }
}

/// Answers the gateway's `remove` with "nothing here", so deleting a
/// sandbox does not wait for `support::gateway`, which ignores it.
async fn nothing_to_remove(nats: async_nats::Client, shutdown: CancellationToken) {
    let subject = subjects::agent_op("gateway", AgentOp::Remove);
    let mut requests = nats.subscribe(subject).await.unwrap();
    nats.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(Some(msg)) = shutdown.run_until_cancelled(requests.next()).await {
            if let Some(reply_to) = msg.reply {
                let none = AgentError::new(ErrorCode::NotFound, "no such container");
                let _ = nats
                    .publish(reply_to, encode(&Reply::<()>::Error(none)).into())
                    .await;
            }
        }
    });
}

async fn site() -> Site {
    let control = support::control().await;
    support::gateway(control.client.clone(), control.shutdown.clone()).await;
    nothing_to_remove(control.client.clone(), control.shutdown.clone()).await;
    let cp = control.cp.clone();
    let router = cp.api_router().merge(sdp_web::router(cp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(sdp_control::serve(
        listener,
        router.clone(),
        control.shutdown.clone(),
    ));
    let mut site = Site {
        control,
        router,
        host,
        cookie: String::new(),
    };
    let (status, headers, body) = site
        .api(
            "POST",
            "/api/v1/session",
            r#"{"username":"achmad","password":"pw"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set = headers[header::SET_COOKIE].to_str().unwrap();
    site.cookie = set.split(';').next().unwrap().to_owned();
    site
}

impl Site {
    async fn api(
        &self,
        method: &str,
        path: &str,
        json: &str,
    ) -> (StatusCode, header::HeaderMap, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, &self.cookie)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_owned()))
            .unwrap();
        support::send(&self.router, req).await
    }

    fn ws_request(
        &self,
        path: &str,
        origin: Option<&str>,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}{path}", self.host)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("cookie", self.cookie.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    }

    async fn open(&self, path: &str) -> Socket {
        let origin = format!("http://{}", self.host);
        let req = self.ws_request(path, Some(&origin));
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    async fn create_sandbox(&self, name: &str) {
        let body = format!(r#"{{"name":"{name}","gateway":{{"branch":"main"}}}}"#);
        let (status, _, text) = self.api("POST", "/api/v1/sandboxes", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }
}

/// The next text frame, or `None` if none comes within `within`.
async fn frame(ws: &mut Socket, within: Duration) -> Option<String> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return None,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("socket: {e}"),
        }
    }
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_overview_gets_a_snapshot_then_a_new_sandbox_without_polling() {
    let site = site().await;
    site.create_sandbox("qa-first").await;
    let mut ws = site.open("/ws/live/sandboxes").await;
    let snapshot = frame(&mut ws, SOON)
        .await
        .expect("a snapshot on connecting");
    assert!(
        snapshot.starts_with(r#"<div id="sandboxes" hx-swap-oob="true">"#),
        "{snapshot}"
    );
    assert!(snapshot.contains(r#"id="sandbox-qa-first""#), "{snapshot}");
    // Nothing changes, so nothing is sent: there is no timer behind it.
    assert_eq!(frame(&mut ws, Duration::from_millis(1500)).await, None);

    site.create_sandbox("qa-second").await;
    let next = frame(&mut ws, SOON)
        .await
        .expect("a frame after the change");
    assert!(next.contains(r#"id="sandbox-qa-second""#), "{next}");
    assert!(next.contains(r#"id="sandbox-qa-first""#), "{next}");

    // A burst of changes arrives as few frames, the last one complete.
    for i in 0..8 {
        site.create_sandbox(&format!("qa-burst-{i}")).await;
    }
    let mut frames = 0;
    let mut last = String::new();
    while let Some(f) = frame(&mut ws, Duration::from_millis(800)).await {
        frames += 1;
        last = f;
    }
    assert!((1..8).contains(&frames), "{frames} frames for 8 changes");
    assert!(last.contains(r#"id="sandbox-qa-burst-7""#), "{last}");
}

#[tokio::test]
async fn a_sandbox_page_follows_its_services_until_the_sandbox_is_deleted() {
    let site = site().await;
    site.create_sandbox("qa-one").await;
    let mut ws = site.open("/ws/live/sandboxes/qa-one").await;
    let snapshot = frame(&mut ws, SOON).await.expect("a snapshot");
    assert!(
        snapshot.contains(r#"id="services-live" hx-swap-oob="true""#),
        "{snapshot}"
    );
    assert!(snapshot.contains(r#"data-service="gateway""#), "{snapshot}");
    // Another sandbox changing does not change this page.
    site.create_sandbox("qa-other").await;
    assert_eq!(frame(&mut ws, Duration::from_millis(1000)).await, None);

    let (status, _, body) = site.api("DELETE", "/api/v1/sandboxes/qa-one", "").await;
    assert!(status.is_success(), "{status} {body}");
    let gone = frame(&mut ws, SOON).await.expect("the last frame");
    assert!(gone.contains("This sandbox was deleted."), "{gone}");
}

#[tokio::test]
async fn the_nodes_page_follows_presence() {
    let site = site().await;
    let mut ws = site.open("/ws/live/nodes").await;
    let snapshot = frame(&mut ws, SOON).await.expect("a snapshot");
    assert!(snapshot.contains(">gateway<"), "{snapshot}");
    assert!(!snapshot.contains(">micro<"), "{snapshot}");
    let micro = Presence {
        node: "micro".into(),
        kind: NodeKind::Micro,
        version: "test".into(),
        public_key: AgentKeys::generate().public_key(),
        address: "127.0.0.1".into(),
        repositories: vec!["account".into()],
        containers: vec![],
    };
    site.control
        .client
        .publish(subjects::node_hello("micro"), encode(&micro).into())
        .await
        .unwrap();
    let next = frame(&mut ws, SOON).await.expect("a frame after the hello");
    assert!(next.contains(">micro<"), "{next}");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn list_sockets_need_a_session_and_the_same_origin() {
    let site = site().await;
    for path in [
        "/ws/live/sandboxes",
        "/ws/live/sandboxes/qa",
        "/ws/live/nodes",
    ] {
        let err =
            tokio_tungstenite::connect_async(site.ws_request(path, Some("http://evil.example")))
                .await
                .expect_err(path);
        assert!(err.to_string().contains("403"), "{path}: {err}");
        // No Origin: not a browser, and these sockets are for browsers.
        let err = tokio_tungstenite::connect_async(site.ws_request(path, None))
            .await
            .expect_err(path);
        assert!(err.to_string().contains("403"), "{path}: {err}");
        let mut anonymous = site.ws_request(path, Some(&format!("http://{}", site.host)));
        anonymous.headers_mut().remove("cookie");
        let err = tokio_tungstenite::connect_async(anonymous)
            .await
            .expect_err(path);
        assert!(err.to_string().contains("303"), "{path}: {err}");
    }
    let origin = format!("http://{}", site.host);
    let err = tokio_tungstenite::connect_async(site.ws_request("/ws/live/other", Some(&origin)))
        .await
        .expect_err("no such list");
    assert!(err.to_string().contains("404"), "{err}");
}
