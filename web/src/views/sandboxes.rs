//! Sandboxes: the overview (status, owner, branches, gateway URL and its QR
//! code), one sandbox (services with deploy buttons, the routes table with a
//! one-click toggle per service), and the form that creates one.
//!
//! The overview's cards and a sandbox's services table are kept current by
//! the server (`crate::live`): the same functions render them in the page
//! and in the fragments pushed over the WebSocket, swapped in by id.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::{csrf_field, page};
use super::{Viewer, state_class};
use sdp_contract::DeploymentState;

/// Where a service comes from in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Branch(String),
    Ocp,
}

impl Source {
    /// From the API's `{"branch": ...}` or `{"use_ocp": true}`.
    pub fn from_value(v: &Value) -> Source {
        match v.get("branch").and_then(Value::as_str) {
            Some(b) => Source::Branch(b.to_owned()),
            None => Source::Ocp,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub name: String,
    pub status: String,
    pub owner: String,
    pub template: Option<String>,
    pub gateway_branch: String,
    pub gateway_url: String,
    pub services: Vec<(String, Source)>,
}

impl From<&sdp_control::sandboxes::SandboxView> for SandboxRow {
    fn from(s: &sdp_control::sandboxes::SandboxView) -> Self {
        SandboxRow {
            name: s.name.clone(),
            status: s.status.clone(),
            owner: s.created_by.clone(),
            template: s.template.clone(),
            gateway_branch: s
                .gateway
                .get("branch")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            gateway_url: s.gateway_url.clone(),
            services: s
                .services
                .iter()
                .map(|(k, v)| (k.clone(), Source::from_value(v)))
                .collect(),
        }
    }
}

/// A form's service choices: for each known repository, a branch, OCP, or
/// left out; `current` preselects what a sandbox or template has now.
pub fn service_picker(repositories: &[String], current: &[(String, Source)]) -> Markup {
    let mut names: Vec<&String> = repositories.iter().collect();
    for (svc, _) in current {
        if !names.contains(&svc) {
            names.push(svc);
        }
    }
    html! {
        fieldset.services {
            legend { "Services" }
            @for r in names {
                @let now = current.iter().find(|(s, _)| s == r).map(|(_, src)| src);
                @let branch = match now { Some(Source::Branch(b)) => b.as_str(), _ => "" };
                div.service-pick {
                    span.svc { (r) }
                    select name={ "mode." (r) } aria-label={ "source of " (r) } {
                        option value="" selected[now.is_none()] { "not in the sandbox" }
                        option value="branch" selected[matches!(now, Some(Source::Branch(_)))] { "branch" }
                        option value="ocp" selected[matches!(now, Some(Source::Ocp))] { "OCP" }
                    }
                    input name={ "branch." (r) } value=(branch) placeholder="branch"
                        aria-label={ "branch of " (r) } autocomplete="off";
                }
            }
        }
    }
}

fn badge(status: &str) -> Markup {
    let class = match status {
        "running" => "state state-running",
        "failed" => "state state-failed",
        "deploying" => "state state-queued",
        _ => "state state-stopped",
    };
    html! { span class=(class) { (status) } }
}

pub struct SandboxesPage {
    pub viewer: Viewer,
    pub sandboxes: Vec<SandboxRow>,
    pub repositories: Vec<String>,
    pub templates: Vec<String>,
    pub environments: Vec<String>,
    pub error: Option<String>,
}

/// The overview's live stream.
pub const OVERVIEW_LIVE: &str = "/ws/live/sandboxes";

/// A sandbox page's live stream (its services table).
pub fn services_live_url(sandbox: &str) -> String {
    format!("/ws/live/sandboxes/{sandbox}")
}

pub fn overview(p: &SandboxesPage) -> Markup {
    page(
        "Sandboxes",
        Some(&p.viewer),
        html! {
            h1 { "Sandboxes" }
            @if let Some(e) = &p.error {
                p.error role="alert" { (e) }
            }
            (cards(&p.sandboxes, false))
            div #sandboxes-live hx-ext="ws" ws-connect=(OVERVIEW_LIVE) {}
            section.card {
                h2 { "New sandbox" }
                form #new-sandbox .stack method="post" action="/sandboxes" {
                    (csrf_field(&p.viewer))
                    label for="sb-name" { "Name" }
                    input #sb-name name="name" required placeholder="e.g. qa-login" autocomplete="off";
                    label for="sb-template" { "Template" }
                    select #sb-template name="template" {
                        option value="" { "none" }
                        @for t in &p.templates { option value=(t) { (t) } }
                    }
                    label for="sb-env" { "Environment" }
                    select #sb-env name="environment" {
                        option value="" { "none" }
                        @for e in &p.environments { option value=(e) { (e) } }
                    }
                    label for="sb-gateway" { "Gateway branch" }
                    input #sb-gateway name="gateway_branch" placeholder="main" autocomplete="off";
                    (service_picker(&p.repositories, &[]))
                    button.primary type="submit" { "Create sandbox" }
                }
            }
        },
    )
}

/// The overview's cards; `oob` marks them for an out-of-band swap when
/// pushed over the live stream.
pub fn cards(sandboxes: &[SandboxRow], oob: bool) -> Markup {
    html! {
        div #sandboxes hx-swap-oob=[oob.then_some("true")] {
            @if sandboxes.is_empty() {
                p.empty.card { "No sandboxes yet." }
            }
            div.grid {
                @for s in sandboxes {
                    article.card.sandbox id={ "sandbox-" (s.name) } {
                        h2 { a href={ "/sandboxes/" (s.name) } { (s.name) } " " (badge(&s.status)) }
                        p.muted {
                            "by " (s.owner)
                            @if let Some(t) = &s.template { " · from template " (t) }
                        }
                        ul.branches {
                            li { span.svc { "gateway" } " " code { (s.gateway_branch) } }
                            @for (svc, src) in &s.services {
                                li {
                                    span.svc { (svc) } " "
                                    @match src {
                                        Source::Branch(b) => code { (b) },
                                        Source::Ocp => span.muted { "OCP" },
                                    }
                                }
                            }
                        }
                        div.gateway {
                            a.gateway-url href=(s.gateway_url) { (s.gateway_url) }
                            img.qr src={ "/sandboxes/" (s.name) "/qr.svg" } loading="lazy"
                                width="96" height="96" alt={ "QR code of " (s.gateway_url) };
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub name: String,
    pub source: Source,
    pub port: Option<u16>,
    /// Latest deployment: id and state.
    pub latest: Option<(String, DeploymentState)>,
}

#[derive(Debug, Clone)]
pub struct RouteRow {
    pub service: String,
    pub mode: String,
    pub target: Option<String>,
    pub ocp_default: Option<String>,
    pub live: bool,
}

pub struct SandboxPage {
    pub viewer: Viewer,
    pub sandbox: SandboxRow,
    pub environment: Option<String>,
    pub gateway_latest: Option<(String, DeploymentState)>,
    pub services: Vec<ServiceRow>,
    pub routes: Vec<RouteRow>,
    /// Every repository a sandbox can take, for the change form.
    pub repositories: Vec<String>,
    pub qr: Option<Markup>,
    pub message: Option<String>,
    pub error: Option<String>,
}

fn latest_link(latest: &Option<(String, DeploymentState)>) -> Markup {
    html! {
        @if let Some((id, state)) = latest {
            a href={ "/deployments/" (id) } { span class=(state_class(*state)) { (state.as_str()) } }
        } @else {
            span.muted { "not deployed" }
        }
    }
}

pub fn detail(p: &SandboxPage) -> Markup {
    let s = &p.sandbox;
    let v = &p.viewer;
    page(
        &s.name,
        Some(v),
        html! {
            h1 { "Sandbox " (s.name) " " (badge(&s.status)) }
            @if let Some(m) = &p.message { p.notice role="status" { (m) } }
            @if let Some(e) = &p.error { p.error role="alert" { (e) } }
            section.card.gateway-card {
                div {
                    p { "Gateway: " a #gateway-url href=(s.gateway_url) { (s.gateway_url) } }
                    p.muted {
                        "by " (s.owner)
                        @if let Some(t) = &s.template { " · template " (t) }
                        @if let Some(e) = &p.environment { " · environment " (e) }
                    }
                    div.actions {
                        form method="post" action={ "/sandboxes/" (s.name) "/deploy" } {
                            (csrf_field(v))
                            button.primary type="submit" { "Deploy all" }
                        }
                        form.inline method="post" action={ "/sandboxes/" (s.name) "/clone" } {
                            (csrf_field(v))
                            input name="name" required placeholder="clone name" aria-label="clone name" autocomplete="off";
                            button type="submit" { "Clone" }
                        }
                        form method="post" action={ "/sandboxes/" (s.name) "/delete" } {
                            (csrf_field(v))
                            button.btn-delete type="submit" { "Delete sandbox" }
                        }
                    }
                }
                @if let Some(qr) = &p.qr { div.qr-big { (qr) } }
            }
            section.card {
                h2 { "Services" }
                (services(&ServicesTable {
                    viewer: v,
                    sandbox: s,
                    gateway_latest: &p.gateway_latest,
                    services: &p.services,
                }, false))
                div #services-stream hx-ext="ws" ws-connect=(services_live_url(&s.name)) {}
            }
            details.card {
                summary { "Change branches" }
                form #change-sandbox .stack method="post" action={ "/sandboxes/" (s.name) "/update" } {
                    (csrf_field(v))
                    label for="ch-gateway" { "Gateway branch" }
                    input #ch-gateway name="gateway_branch" value=(s.gateway_branch) autocomplete="off";
                    (service_picker(&p.repositories, &s.services))
                    button.primary type="submit" { "Save" }
                }
            }
            section.card {
                h2 { "Routes" }
                div.scroll {
                    table #routes {
                        thead { tr { th { "Service" } th { "Mode" } th { "Live target" } th { "OCP default" } th {} } }
                        tbody {
                            @for r in &p.routes {
                                tr data-service=(r.service) {
                                    td { (r.service) }
                                    td { span class={ "mode mode-" (r.mode) } { (r.mode) }
                                        @if !r.live { " " span.muted title="the gateway could not be asked; this is the stored choice" { "(not live)" } } }
                                    td { code { (r.target.as_deref().unwrap_or("—")) } }
                                    td { code { (r.ocp_default.as_deref().unwrap_or("—")) } }
                                    td {
                                        form method="post" action={ "/sandboxes/" (s.name) "/routes/" (r.service) } {
                                            (csrf_field(v))
                                            @let other = if r.mode == "sandbox" { "ocp" } else { "sandbox" };
                                            input type="hidden" name="mode" value=(other);
                                            button type="submit" { "Route to " (if other == "ocp" { "OCP" } else { "sandbox" }) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What a sandbox's services table shows.
pub struct ServicesTable<'a> {
    pub viewer: &'a Viewer,
    pub sandbox: &'a SandboxRow,
    pub gateway_latest: &'a Option<(String, DeploymentState)>,
    pub services: &'a [ServiceRow],
}

/// A sandbox's services with their latest deployment and deploy buttons;
/// `oob` marks it for an out-of-band swap when pushed over the live stream.
pub fn services(t: &ServicesTable, oob: bool) -> Markup {
    html! {
        div.scroll #services-live hx-swap-oob=[oob.then_some("true")] {
            table #services {
                thead { tr { th { "Service" } th { "Source" } th { "Port" } th { "Latest" } th {} } }
                tbody {
                    tr data-service="gateway" {
                        td { "gateway" }
                        td { code { (t.sandbox.gateway_branch) } }
                        td {}
                        td { (latest_link(t.gateway_latest)) }
                        td {}
                    }
                    @for svc in t.services {
                        tr data-service=(svc.name) {
                            td { (svc.name) }
                            td {
                                @match &svc.source {
                                    Source::Branch(b) => code { (b) },
                                    Source::Ocp => span.muted { "OCP" },
                                }
                            }
                            td { @if let Some(port) = svc.port { (port) } }
                            td { (latest_link(&svc.latest)) }
                            td {
                                @if matches!(svc.source, Source::Branch(_)) {
                                    form method="post" action={ "/sandboxes/" (t.sandbox.name) "/deploy" } {
                                        (csrf_field(t.viewer))
                                        input type="hidden" name="service" value=(svc.name);
                                        button type="submit" { "Deploy" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The sandbox was deleted while its page was open.
pub fn services_gone() -> Markup {
    html! {
        div.scroll #services-live hx-swap-oob="true" {
            p.error role="alert" { "This sandbox was deleted." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Viewer {
        Viewer {
            name: "achmad".into(),
            csrf: "tok".into(),
        }
    }

    fn row() -> SandboxRow {
        SandboxRow {
            name: "qa-login".into(),
            status: "running".into(),
            owner: "achmad".into(),
            template: Some("mobile".into()),
            gateway_branch: "main".into(),
            gateway_url: "http://10.0.0.5:8080".into(),
            services: vec![
                ("account".into(), Source::Branch("feature/<x>".into())),
                ("eredar".into(), Source::Ocp),
            ],
        }
    }

    #[test]
    fn the_overview_shows_status_owner_branches_and_a_qr_code() {
        let html = overview(&SandboxesPage {
            viewer: viewer(),
            sandboxes: vec![row()],
            repositories: vec!["account".into()],
            templates: vec![],
            environments: vec![],
            error: None,
        })
        .into_string();
        assert!(html.contains(r#"<a href="/sandboxes/qa-login">qa-login</a>"#));
        assert!(html.contains(r#"class="state state-running">running<"#));
        assert!(html.contains("feature/&lt;x&gt;"));
        assert!(html.contains(r#"src="/sandboxes/qa-login/qr.svg""#));
        assert!(html.contains(r#"name="mode.account""#));
        assert!(html.contains(r#"name="_csrf" value="tok""#));
    }

    #[test]
    fn the_detail_has_deploy_buttons_and_route_toggles() {
        let html = detail(&SandboxPage {
            viewer: viewer(),
            sandbox: row(),
            environment: None,
            gateway_latest: None,
            services: vec![
                ServiceRow {
                    name: "account".into(),
                    source: Source::Branch("feature/x".into()),
                    port: Some(9001),
                    latest: Some(("d-1".into(), DeploymentState::Running)),
                },
                ServiceRow {
                    name: "eredar".into(),
                    source: Source::Ocp,
                    port: None,
                    latest: None,
                },
            ],
            routes: vec![RouteRow {
                service: "account".into(),
                mode: "sandbox".into(),
                target: Some("http://10.0.0.2:9001".into()),
                ocp_default: Some("http://ocp/account".into()),
                live: true,
            }],
            repositories: vec!["account".into(), "user".into()],
            qr: None,
            message: None,
            error: None,
        })
        .into_string();
        assert!(!html.contains("hx-trigger"), "{html}");
        assert!(html.contains(r#"ws-connect="/ws/live/sandboxes/qa-login""#));
        assert!(html.contains(r#"action="/sandboxes/qa-login/update""#));
        assert!(
            html.contains(r#"name="branch.account" value="feature/&lt;x&gt;""#),
            "{html}"
        );
        assert!(html.contains(r#"<option value="ocp" selected>OCP</option>"#));
        assert!(html.contains(r#"action="/sandboxes/qa-login/routes/account""#));
        assert!(html.contains(r#"name="mode" value="ocp""#));
        assert!(html.contains("Route to OCP"));
        assert!(html.contains(r#"name="service" value="account""#));
        assert!(
            !html.contains(r#"name="service" value="eredar""#),
            "no deploy for OCP services"
        );
        assert!(html.contains(r#"href="/deployments/d-1""#));
        assert!(html.contains("http://ocp/account"));
    }

    #[test]
    fn lists_are_pushed_to_not_polled_and_swap_by_id() {
        let overview = overview(&SandboxesPage {
            viewer: viewer(),
            sandboxes: vec![],
            repositories: vec![],
            templates: vec![],
            environments: vec![],
            error: None,
        })
        .into_string();
        assert!(!overview.contains("hx-trigger"), "{overview}");
        assert!(overview.contains(r#"ws-connect="/ws/live/sandboxes""#));
        assert!(overview.contains(r#"<div id="sandboxes"><p class="empty card">"#));

        let pushed = cards(&[row()], true).into_string();
        assert!(
            pushed.starts_with(r#"<div id="sandboxes" hx-swap-oob="true">"#),
            "{pushed}"
        );
        assert!(pushed.contains(r#"id="sandbox-qa-login""#));
        assert!(pushed.contains("feature/&lt;x&gt;"));

        let sb = row();
        let rows = [ServiceRow {
            name: "account".into(),
            source: Source::Branch("main".into()),
            port: Some(9001),
            latest: Some(("d-2".into(), DeploymentState::Queued)),
        }];
        let table = ServicesTable {
            viewer: &viewer(),
            sandbox: &sb,
            gateway_latest: &None,
            services: &rows,
        };
        let pushed = services(&table, true).into_string();
        assert!(
            pushed.starts_with(r#"<div class="scroll" id="services-live" hx-swap-oob="true">"#),
            "{pushed}"
        );
        assert!(pushed.contains(r#"href="/deployments/d-2""#));
        assert!(pushed.contains(r#"name="_csrf" value="tok""#));
        assert!(
            !services(&table, false)
                .into_string()
                .contains("hx-swap-oob")
        );
        assert!(services_gone().into_string().contains("deleted"));
    }
}
