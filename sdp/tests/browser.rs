//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! driven through `chromium-driver`) against the whole stack with real agents,
//! a real git server and Docker (`support::Bed`). Screenshots of every step
//! go to `target/browser-shots/{test}/`; a failing test leaves
//! `failure.png` and `failure.html` there.

#[path = "browser/driver.rs"]
mod driver;
mod support;

use std::time::Duration;

use driver::{Browser, Result};
use support::{Bed, Options, USER, free_port};

const BUILD: Duration = Duration::from_secs(300);
const PAGE: Duration = Duration::from_secs(20);
/// The environment file the dashboard adds, by its path in the container.
const MOTD: &str = "/etc/sdp/motd.txt";

/// Signs in through the form and lands on the sandboxes overview.
async fn sign_in(b: &Browser, password: &str) -> Result {
    b.goto("/login").await?;
    b.fill("#username", USER).await?;
    b.fill("#password", password).await?;
    b.click("form.login button[type=submit]").await?;
    Ok(())
}

/// Creates sandbox `name` (gateway on `main`, no services yet) on the
/// overview page's form.
async fn create_sandbox(b: &Browser, name: &str) -> Result {
    b.goto("/sandboxes").await?;
    b.fill("#sb-name", name).await?;
    b.fill("#sb-gateway", "main").await?;
    b.click("#new-sandbox button[type=submit]").await?;
    b.wait_text("h1", PAGE, "the sandbox page", |t| t.contains(name))
        .await?;
    Ok(())
}

/// Fills the deploy form and submits it; returns the deployment page's path.
async fn deploy(
    b: &Browser,
    sandbox: &str,
    repository: &str,
    branch: &str,
    port: u16,
) -> Result<String> {
    b.goto("/deploy").await?;
    b.fill("#sandbox", sandbox).await?;
    b.select("#repository", repository).await?;
    // Picking the repository loads its branches, listed live by the agent.
    b.wait_for(&format!("#branch-list option[value='{branch}']"), PAGE)
        .await?;
    b.fill("#branch", branch).await?;
    b.fill("#port", &port.to_string()).await?;
    b.shot("deploy-form").await?;
    b.click("#deploy button[type=submit]").await?;
    b.wait_for("#deployment-head", PAGE).await?;
    let path = b.path().await?;
    assert!(path.starts_with("/deployments/"), "after deploying: {path}");
    Ok(path)
}

/// Stops the stack. The browser's work is checked by then; a stack that does
/// not stop is reported, not waited for (an agent's last flush can wait on a
/// broker that is already gone).
async fn stop(bed: Bed) {
    if tokio::time::timeout(Duration::from_secs(30), bed.stop())
        .await
        .is_err()
    {
        eprintln!("warning: the stack did not stop within 30 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_deploy_a_branch_and_watch_progress_and_logs_live() {
    let bed = Bed::start(Options::default()).await;
    let b = Browser::start(&bed.stack.base_url(), "deploy_live").await;
    b.run(async {
        // Every page needs a session: the overview sends us to sign in.
        b.goto("/sandboxes").await?;
        assert_eq!(b.path().await?, "/login");
        b.shot("login").await?;

        // A wrong password is refused on the login page itself.
        sign_in(&b, "not-the-password").await?;
        let err = b
            .wait_text("p.error[role=alert]", PAGE, "the refusal", |t| {
                t.contains("rejected")
            })
            .await?;
        assert!(err.contains("Bitbucket rejected"), "{err}");
        assert_eq!(b.path().await?, "/login");
        b.shot("login-wrong-password").await?;

        sign_in(&b, &bed.password).await?;
        b.wait_text("h1", PAGE, "the overview", |t| t == "Sandboxes")
            .await?;
        b.shot("signed-in").await?;

        create_sandbox(&b, &bed.sandbox).await?;
        b.shot("sandbox-created").await?;

        let port = free_port();
        let path = deploy(&b, &bed.sandbox, "account", "feature/login-error", port).await?;
        let id = path.trim_start_matches("/deployments/").to_owned();
        // A reload would drop this; it must survive until the end.
        b.js("window.sdpNoReload = 'still here'; return null;")
            .await?;
        b.shot("deployment-queued").await?;

        b.wait_text("#log", BUILD, "build output", |t| t.contains("[go build]"))
            .await?;
        b.shot("deployment-building").await?;
        // Drop the connection mid-build and open a new one, as the htmx
        // extension does after a network blip: the new stream must neither
        // repeat nor lose a line (checked against the stored log below).
        b.js(
            "var w = document.getElementById('live')['htmx-internal-data'].webSocket; \
              w.socket.close(); w.init(); return null;",
        )
        .await?;
        b.wait_for("#deployment-head[data-state=RUNNING]", BUILD)
            .await?;
        let done = b
            .wait_text("#stages", PAGE, "five ticks", |t| {
                t.matches('✓').count() == 5
            })
            .await?;
        for stage in [
            "git fetch",
            "git checkout",
            "git pull",
            "go build",
            "start container",
        ] {
            assert!(done.contains(stage), "{stage} missing from {done}");
        }
        b.wait_text("#log", PAGE, "the container start", |t| {
            t.contains("[start container]")
        })
        .await?;
        b.shot("deployment-running").await?;

        let marker = b.js("return window.sdpNoReload || null;").await?;
        assert_eq!(marker, "still here", "the page reloaded");

        // Every line of the log, in order, exactly once.
        let shown = b.find("#log").await?.text().await?;
        let signed_in = bed.login(&bed.password).await;
        assert_eq!(signed_in.status(), 200);
        let stored = bed.logs(&id).await;
        assert_eq!(
            shown.trim_end(),
            stored.trim_end(),
            "page log differs from the stored log"
        );

        let body: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/hello"))
            .await?
            .json()
            .await?;
        assert_eq!(body["branch"], "feature/login-error", "{body}");

        // The history lists it; the nodes page shows both agents connected.
        b.goto(&format!("/?sandbox={}", bed.sandbox)).await?;
        b.wait_text("#history", PAGE, "the deployment", |t| {
            t.contains("RUNNING")
        })
        .await?;
        b.shot("history").await?;
        b.goto("/nodes").await?;
        let rows = b
            .wait_text("#nodes tbody", PAGE, "both agents", |t| {
                t.lines().count() == 2
            })
            .await?;
        assert!(rows.contains("micro") && rows.contains("gateway"), "{rows}");
        let connected = b
            .js("return document.querySelectorAll('#nodes tbody .state-running').length;")
            .await?;
        assert_eq!(connected, 2, "{rows}");
        b.shot("nodes").await?;

        // The same page on a phone.
        b.client.set_window_size(390, 844).await?;
        b.goto(&format!("/sandboxes/{}", bed.sandbox)).await?;
        b.shot("sandbox-on-a-phone").await?;
        Ok(())
    })
    .await;
    b.close().await;
    stop(bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_shows_the_failing_stage_in_red_with_its_log() {
    let bed = Bed::start(Options::default()).await;
    let b = Browser::start(&bed.stack.base_url(), "failed_build").await;
    b.run(async {
        sign_in(&b, &bed.password).await?;
        b.wait_text("h1", PAGE, "the overview", |t| t == "Sandboxes")
            .await?;
        create_sandbox(&b, &bed.sandbox).await?;
        deploy(&b, &bed.sandbox, "account", "broken-build", free_port()).await?;
        b.wait_for("#deployment-head[data-state=FAILED]", BUILD)
            .await?;
        let failed = b.wait_for("li.stage-failed", PAGE).await?;
        assert_eq!(
            failed.attr("data-stage").await?.as_deref(),
            Some("go build")
        );
        let log = b
            .find("li.stage-failed pre.stage-log")
            .await?
            .text()
            .await?;
        assert!(!log.trim().is_empty(), "the failing stage shows its log");
        let color = b
            .js("return getComputedStyle(document.querySelector('li.stage-failed .name')).color;")
            .await?;
        assert_eq!(color, "rgb(179, 38, 30)", "the failing stage is red");
        b.shot("failed-build").await?;
        Ok(())
    })
    .await;
    b.close().await;
    stop(bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_templates_sandboxes_and_routes_from_the_dashboard() {
    let bed = Bed::start(Options::default()).await;
    let b = Browser::start(&bed.stack.base_url(), "templates_routes").await;
    let secret = "Tok-s3cret-never-shown";
    b.run(async {
        sign_in(&b, &bed.password).await?;
        b.wait_text("h1", PAGE, "the overview", |t| t == "Sandboxes")
            .await?;

        // An environment: variables in the clear, a secret write-only.
        b.goto("/environments").await?;
        b.fill("#env-name", "dev").await?;
        b.fill("#env-vars", "GREETING=hello").await?;
        b.fill("#env-secrets", &format!("API_TOKEN={secret}"))
            .await?;
        b.click("#env-secrets ~ button[type=submit]").await?;
        b.wait_text("#env-dev", PAGE, "the new environment", |t| {
            t.contains("API_TOKEN")
        })
        .await?;
        let vars = b
            .find("#env-dev textarea[name=variables]")
            .await?
            .prop("value")
            .await?;
        assert_eq!(vars.as_deref(), Some("GREETING=hello\n"));
        assert!(
            !b.client.source().await?.contains(secret),
            "a secret was rendered"
        );
        b.shot("environment").await?;

        // A file for the environment, listed by its path once added; the
        // browser sends the textarea's lines as CRLF, the file keeps LF.
        b.fill("#file-path-dev", MOTD).await?;
        b.fill("#file-content-dev", "hello <b>file</b>\nline 2")
            .await?;
        b.click("#files-dev form.new-file button[type=submit]")
            .await?;
        b.wait_text("p.notice", PAGE, "the saved file", |t| {
            t.contains(&format!("file {MOTD} saved"))
        })
        .await?;
        let file = format!("#files-dev details.file[data-path='{MOTD}']");
        b.click(&format!("{file} summary")).await?;
        let content = b
            .find(&format!("{file} textarea[name=content]"))
            .await?
            .prop("value")
            .await?;
        assert_eq!(content.as_deref(), Some("hello <b>file</b>\nline 2"));
        assert!(
            !b.client.source().await?.contains(secret),
            "a secret was rendered"
        );
        b.shot("environment-file").await?;

        // A template: account from a branch, payment from OCP.
        b.goto("/templates").await?;
        b.fill("#tp-name", "mobile").await?;
        b.select("#tp-env", "dev").await?;
        b.fill("#tp-gateway", "main").await?;
        b.select("#new-template select[name='mode.account']", "branch")
            .await?;
        b.fill("#new-template input[name='branch.account']", "develop")
            .await?;
        b.select("#new-template select[name='mode.payment']", "ocp")
            .await?;
        b.click("#new-template button[type=submit]").await?;
        let card = b
            .wait_text("#template-mobile", PAGE, "the template", |t| {
                t.contains("develop")
            })
            .await?;
        assert!(card.contains("payment") && card.contains("OCP"), "{card}");
        b.shot("template").await?;

        // Edited: account on the feature branch, a variable of its own.
        b.click("#template-mobile details.edit summary").await?;
        b.fill(
            "#edit-template-mobile input[name='branch.account']",
            "feature/login-error",
        )
        .await?;
        b.fill("#tp-mobile-vars", "DEMO_LEVEL=debug").await?;
        b.shot("template-edit").await?;
        b.click("#edit-template-mobile button[type=submit]").await?;
        b.wait_text("p.notice", PAGE, "the saved template", |t| {
            t.contains("template mobile saved")
        })
        .await?;
        let branches = b.find("#template-mobile ul.branches").await?.text().await?;
        assert!(
            branches.contains("feature/login-error") && !branches.contains("develop"),
            "{branches}"
        );
        b.shot("template-edited").await?;

        // A sandbox from it.
        b.fill("#template-mobile input[name=name]", &bed.sandbox)
            .await?;
        b.click("#template-mobile form.inline button[type=submit]")
            .await?;
        b.wait_text("h1", PAGE, "the sandbox", |t| t.contains(&bed.sandbox))
            .await?;
        let services = b.find("#services").await?.text().await?;
        assert!(
            services.contains("feature/login-error") && services.contains("OCP"),
            "{services}"
        );
        let routes = b.find("#routes").await?.text().await?;
        assert!(
            routes.contains("account") && routes.contains("payment"),
            "{routes}"
        );
        b.wait_for("#routes tr[data-service=account] .mode-sandbox", PAGE)
            .await?;
        b.wait_for("#routes tr[data-service=payment] .mode-ocp", PAGE)
            .await?;
        b.shot("sandbox-from-template").await?;

        // One click sends account to OCP, one more back to the sandbox.
        b.click("#routes tr[data-service=account] button").await?;
        b.wait_for("#routes tr[data-service=account] .mode-ocp", PAGE)
            .await?;
        b.shot("route-to-ocp").await?;
        b.click("#routes tr[data-service=account] button").await?;
        b.wait_for("#routes tr[data-service=account] .mode-sandbox", PAGE)
            .await?;

        // Another branch for account, saved on the sandbox page.
        b.click("details.card summary").await?;
        b.fill("#change-sandbox input[name='branch.account']", "develop")
            .await?;
        b.click("#change-sandbox button[type=submit]").await?;
        b.wait_text("p.notice", PAGE, "the saved change", |t| {
            t.contains("saved")
        })
        .await?;
        let services = b.find("#services").await?.text().await?;
        assert!(services.contains("develop"), "{services}");

        // The service's own deploy button.
        b.click("#services tr[data-service=account] button").await?;
        b.wait_for("#deployment-head[data-state=RUNNING]", BUILD)
            .await?;
        b.shot("deployed-from-sandbox").await?;

        // What was edited reaches the container: the template's variable
        // and the environment's file.
        assert_eq!(bed.login(&bed.password).await.status(), 200);
        let sandbox: serde_json::Value = bed
            .http
            .get(bed.url(&format!("/sandboxes/{}", bed.sandbox)))
            .send()
            .await?
            .json()
            .await?;
        let port = &sandbox["services"]["account"]["port"];
        let hello: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/hello"))
            .await?
            .json()
            .await?;
        assert_eq!(hello["env"]["DEMO_LEVEL"], "debug", "{hello}");
        let mounts = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{json .Mounts}}"])
            .arg(format!("sandbox-{}-account", bed.sandbox))
            .output()?;
        let mounts: serde_json::Value = serde_json::from_slice(&mounts.stdout)?;
        let source = mounts
            .as_array()
            .and_then(|m| m.iter().find(|m| m["Destination"] == MOTD))
            .and_then(|m| m["Source"].as_str())
            .ok_or_else(|| format!("{MOTD} is not mounted: {mounts}"))?;
        assert_eq!(
            std::fs::read_to_string(source)?,
            "hello <b>file</b>\nline 2"
        );

        // Everything above is in the audit trail, by this user.
        b.goto("/audit").await?;
        let trail = b.find("table").await?.text().await?;
        for action in [
            "environment_create",
            "environment_update",
            "template_create",
            "template_update",
            "sandbox_create",
            "route_set",
            "deployment_create",
        ] {
            assert!(
                trail.contains(action),
                "{action} missing from the audit trail:\n{trail}"
            );
        }
        assert!(!trail.contains(secret));
        b.shot("audit").await?;
        Ok(())
    })
    .await;
    b.close().await;
    support::remove_sandbox_containers(&bed.sandbox);
    stop(bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_gateway_read_off_the_page_reaches_the_sandbox_service() {
    let bed = Bed::start_routing().await;
    let b = Browser::start(&bed.stack.base_url(), "gateway_walk").await;
    b.run(async {
        sign_in(&b, &bed.password).await?;
        b.wait_text("h1", PAGE, "the overview", |t| t == "Sandboxes")
            .await?;

        // account from its feature branch, payment from OCP.
        b.fill("#sb-name", &bed.sandbox).await?;
        b.fill("#sb-gateway", "main").await?;
        b.select("#new-sandbox select[name='mode.account']", "branch")
            .await?;
        b.fill(
            "#new-sandbox input[name='branch.account']",
            "feature/login-error",
        )
        .await?;
        b.select("#new-sandbox select[name='mode.payment']", "ocp")
            .await?;
        b.shot("new-sandbox").await?;
        b.click("#new-sandbox button[type=submit]").await?;
        b.wait_text("h1", PAGE, "the sandbox", |t| t.contains(&bed.sandbox))
            .await?;

        // Deploy all: the gateway and account; the table follows them live.
        b.click("form[action$='/deploy'] button.primary").await?;
        b.wait_text("p.notice", PAGE, "the queued deployments", |t| {
            t.contains("2 deployments queued")
        })
        .await?;
        b.shot("deploying").await?;
        b.wait_for("#services tr[data-service=account] .state-running", BUILD)
            .await?;
        b.wait_for("#services tr[data-service=gateway] .state-running", BUILD)
            .await?;
        b.goto(&format!("/sandboxes/{}", bed.sandbox)).await?;
        b.wait_for("#routes tr[data-service=account] .mode-sandbox", PAGE)
            .await?;
        b.shot("running").await?;

        // The URL a phone would use, read off the page.
        let url = b.find("#gateway-url").await?.text().await?;
        let body: serde_json::Value = reqwest::get(format!("{url}/erangel/account/hello"))
            .await?
            .json()
            .await?;
        assert_eq!(body["service"], "account", "{body}");
        assert_eq!(body["branch"], "feature/login-error", "{body}");
        Ok(())
    })
    .await;
    b.close().await;
    support::remove_sandbox_containers(&bed.sandbox);
    stop(bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_overview_shows_a_sandbox_created_elsewhere_without_reload() {
    let bed = Bed::start(Options::default()).await;
    let b = Browser::start(&bed.stack.base_url(), "live_lists").await;
    b.run(async {
        sign_in(&b, &bed.password).await?;
        b.wait_text("h1", PAGE, "the overview", |t| t == "Sandboxes")
            .await?;
        // The page is pushed to, not polled: it asks for nothing by itself.
        let polls = b
            .js("return document.querySelectorAll('[hx-trigger]').length;")
            .await?;
        assert_eq!(polls, 0, "the overview polls");
        b.js("window.sdpNoReload = 'still here'; return null;")
            .await?;

        // Someone else (here: the API) creates a sandbox.
        let signed_in = bed.login(&bed.password).await;
        assert_eq!(signed_in.status(), 200);
        let created = bed
            .http
            .post(bed.url("/sandboxes"))
            .json(&serde_json::json!({"name": bed.sandbox, "gateway": {"branch": "main"}}))
            .send()
            .await?;
        assert_eq!(created.status(), 201);
        let card = b
            .wait_text(
                &format!("#sandbox-{}", bed.sandbox),
                PAGE,
                "the new sandbox",
                |t| t.contains("main"),
            )
            .await?;
        assert!(card.contains(&bed.sandbox), "{card}");
        let marker = b.js("return window.sdpNoReload || null;").await?;
        assert_eq!(marker, "still here", "the page reloaded");
        b.shot("sandbox-appeared").await?;
        Ok(())
    })
    .await;
    b.close().await;
    stop(bed).await;
}
