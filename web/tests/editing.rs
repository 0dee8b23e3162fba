//! Editing templates and environment files through the dashboard's forms,
//! against a real control plane on a real nats-server. Signing in needs a
//! gateway agent: `support::gateway` stands in, answering `hello` and `auth`
//! (the browser walk in `sdp/tests/browser.rs` uses the real agents).

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sdp_control::ControlPlane;
use tower::ServiceExt;

const SECRET: &str = "Tok-s3cret-never-shown";

struct Dash {
    control: support::Control,
    cp: ControlPlane,
    router: axum::Router,
    cookie: String,
    csrf: String,
}

impl Dash {
    /// A control plane, the dashboard over it, and a signed-in user.
    async fn start() -> Dash {
        let control = support::control().await;
        support::gateway(control.client.clone(), control.shutdown.clone()).await;
        let mut dash = Dash {
            cp: control.cp.clone(),
            router: sdp_web::router(control.cp.clone()),
            control,
            cookie: String::new(),
            csrf: String::new(),
        };
        let (status, headers, body) = dash
            .send(form("/login", "username=achmad&password=pw"))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let set = headers[header::SET_COOKIE].to_str().unwrap();
        dash.cookie = set.split(';').next().unwrap().to_owned();
        let (_, _, page) = dash.get("/templates").await;
        let at = page.find(r#"name="_csrf" value=""#).expect("a CSRF field") + 20;
        dash.csrf = page[at..at + page[at..].find('"').unwrap()].to_owned();
        dash
    }

    async fn send(&self, mut req: Request<Body>) -> (StatusCode, header::HeaderMap, String) {
        if !self.cookie.is_empty() {
            req.headers_mut()
                .insert(header::COOKIE, self.cookie.parse().unwrap());
        }
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, header::HeaderMap, String) {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// Submits a form as the page would, with the session's CSRF token.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String, String) {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        let body = serde_urlencoded::to_string(&all).unwrap();
        let (status, headers, page) = self.send(form(path, &body)).await;
        let to = headers
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, to, page)
    }
}

fn form(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_template_is_edited_and_the_page_shows_the_change() {
    let d = Dash::start().await;
    for env in ["dev", "qa"] {
        let (status, _, page) = d.post("/environments", &[("name", env)]).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    }
    let (status, _, page) = d
        .post(
            "/templates",
            &[
                ("name", "mobile"),
                ("environment", "dev"),
                ("gateway_branch", "main"),
                ("mode.account", "branch"),
                ("branch.account", "feature/login-error"),
                ("mode.payment", "ocp"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");

    // Another environment, gateway branch and account source; payment
    // dropped; a variable and a secret of the template's own.
    let (status, to, page) = d
        .post(
            "/templates/mobile/update",
            &[
                ("environment", "qa"),
                ("gateway_branch", "release/2"),
                ("mode.account", "ocp"),
                ("branch.account", ""),
                ("mode.payment", ""),
                ("variables", "LEVEL=debug\r\n"),
                ("secrets", &format!("API_TOKEN={SECRET}")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert!(to.starts_with("/templates?msg="), "{to}");
    let t = d.cp.template("mobile").await.unwrap();
    assert_eq!(t.environment.as_deref(), Some("qa"));
    assert_eq!(t.gateway["branch"], "release/2");
    assert_eq!(
        t.services.keys().collect::<Vec<_>>(),
        ["account"],
        "{:?}",
        t.services
    );
    assert_eq!(t.services["account"]["use_ocp"], true);
    assert_eq!(t.variables["LEVEL"], "debug");
    assert_eq!(t.secrets, ["API_TOKEN"]);

    let (status, _, page) = d.get(&to).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"<p class="notice" role="status">template mobile saved</p>"#),
        "{page}"
    );
    assert!(page.contains("<code>release/2</code>"));
    assert!(page.contains(r#"<option value="qa" selected>qa</option>"#));
    assert!(page.contains(r#"name="remove_secret" value="API_TOKEN""#));
    assert!(!page.contains(SECRET), "a secret was rendered");

    // A bad branch is refused with the reason, and nothing changes.
    let (status, _, page) = d
        .post(
            "/templates/mobile/update",
            &[
                ("environment", "dev"),
                ("gateway_branch", "--upload-pack=x"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains(r#"<p class="error" role="alert">"#), "{page}");
    assert_eq!(
        d.cp.template("mobile")
            .await
            .unwrap()
            .environment
            .as_deref(),
        Some("qa")
    );
    // The secret is removed by name only.
    let (status, _, _) = d
        .post(
            "/templates/mobile/update",
            &[
                ("environment", ""),
                ("gateway_branch", "release/2"),
                ("remove_secret", "API_TOKEN"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let t = d.cp.template("mobile").await.unwrap();
    assert!(t.secrets.is_empty() && t.environment.is_none(), "{t:?}");

    let (status, _, page) = d
        .post("/templates/nope/update", &[("gateway_branch", "main")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("not found"), "{page}");

    let audit = d.get("/audit").await.2;
    assert!(audit.contains("template_update"), "{audit}");
    d.control.shutdown.cancel();
}

#[tokio::test]
async fn environment_files_are_added_replaced_and_removed() {
    let d = Dash::start().await;
    let (status, _, _) = d
        .post(
            "/environments",
            &[
                ("name", "dev"),
                ("variables", "GREETING=hello"),
                ("secrets", &format!("API_TOKEN={SECRET}")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let content = "  indented: <yes>\r\nnext: 2\r\n";
    let (status, to, page) = d
        .post(
            "/environments/dev/files",
            &[("path", "/etc/app/config.yml"), ("content", content)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let env = d.cp.environment("dev").await.unwrap();
    assert_eq!(
        env.files["/etc/app/config.yml"],
        "  indented: <yes>\nnext: 2\n"
    );
    // Adding a file keeps the variables and the secret.
    assert_eq!(env.variables["GREETING"], "hello");
    assert_eq!(env.secrets, ["API_TOKEN"]);

    let (_, _, page) = d.get(&to).await;
    assert!(
        page.contains(r#"role="status">dev: file /etc/app/config.yml saved</p>"#),
        "{page}"
    );
    assert!(page.contains(r#"data-path="/etc/app/config.yml""#));
    assert!(page.contains("  indented: &lt;yes&gt;\nnext: 2\n</textarea>"));
    assert!(!page.contains(SECRET), "a secret was rendered");

    // A second file, then the first replaced: each change touches one file.
    for (path, content) in [("/srv/b.txt", "b"), ("/etc/app/config.yml", "v2")] {
        let (status, _, page) = d
            .post(
                "/environments/dev/files",
                &[("path", path), ("content", content)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    }
    let files = d.cp.environment("dev").await.unwrap().files;
    assert_eq!(files["/etc/app/config.yml"], "v2");
    assert_eq!(files["/srv/b.txt"], "b");

    // A path that climbs out is refused, and the form keeps what was typed.
    let (status, _, page) = d
        .post(
            "/environments/dev/files",
            &[("path", "../escape"), ("content", "<typed>")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains(r#"<p class="error" role="alert">invalid files path"#),
        "{page}"
    );
    assert!(page.contains(r#"value="../escape""#) && page.contains("&lt;typed&gt;"));
    assert_eq!(d.cp.environment("dev").await.unwrap().files.len(), 2);

    let (status, to, _) = d
        .post(
            "/environments/dev/files",
            &[("path", "/srv/b.txt"), ("remove", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(d.get(&to).await.2.contains("dev: file /srv/b.txt removed"));
    let files = d.cp.environment("dev").await.unwrap().files;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["/etc/app/config.yml"]);

    let (status, _, page) = d
        .post(
            "/environments/dev/files",
            &[("path", "/srv/b.txt"), ("remove", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no file"), "{page}");
    let (status, _, _) = d
        .post(
            "/environments/nope/files",
            &[("path", "/a"), ("content", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    d.control.shutdown.cancel();
}

#[tokio::test]
async fn editing_forms_need_the_session_s_csrf_token() {
    let d = Dash::start().await;
    let (status, _, _) = d.post("/environments", &[("name", "dev")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for (path, body) in [
        ("/environments/dev/files", "path=%2Fa&content=x"),
        ("/templates/mobile/update", "gateway_branch=main"),
    ] {
        let (status, _, page) = d.send(form(path, body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            page.contains("missing") || page.contains("expired"),
            "{page}"
        );
        // One hex digit off.
        let flipped = if d.csrf.starts_with('0') { "1" } else { "0" };
        let forged = format!("_csrf={flipped}{}&{body}", &d.csrf[1..]);
        let (status, _, _) = d.send(form(path, &forged)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(d.cp.environment("dev").await.unwrap().files.is_empty());
    d.control.shutdown.cancel();
}
