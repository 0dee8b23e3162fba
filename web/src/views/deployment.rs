//! One deployment: its stages (✓ with timings, ✗ in red with the failing
//! stage's log), the live log, restart/stop/delete. The same functions render
//! the page and the fragments the live stream pushes, so both always agree.

use maud::{Markup, html};
use sdp_contract::DeploymentState;
use sdp_control::{Deployment, StageStatus};

use super::layout::page;
use super::{Viewer, duration, state_class, time};

/// Lines of a failed stage shown under it.
pub const FAILED_STAGE_LINES: usize = 40;

#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub name: String,
    pub status: StageStatus,
    pub reason: Option<String>,
    pub took: Option<String>,
    /// The end of this stage's log, when it failed.
    pub log: Vec<String>,
}

/// Everything above the log: replaced whole when the deployment changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub id: String,
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    pub by: String,
    pub state: DeploymentState,
    pub port: u16,
    pub commit: Option<String>,
    pub reason: Option<String>,
    pub started: String,
    pub completed: String,
    pub stages: Vec<StageRow>,
    /// CSRF token for the action buttons.
    pub csrf: String,
}

impl Head {
    /// `log` is (the end of) the deployment's log, to pick the failed
    /// stage's lines from.
    pub fn new(d: &Deployment, log: &str, csrf: String) -> Self {
        Head {
            id: d.id.clone(),
            sandbox: d.sandbox.clone(),
            repository: d.repository.clone(),
            branch: d.branch.clone(),
            by: d.user.clone(),
            state: d.state,
            port: d.port,
            commit: d.commit.clone(),
            reason: d.reason.clone(),
            started: time(d.started_at),
            completed: time(d.completed_at),
            stages: d
                .stages
                .iter()
                .map(|s| StageRow {
                    name: s.name.clone(),
                    status: s.status,
                    reason: s.reason.clone(),
                    took: duration(s.started_at, s.completed_at),
                    log: if s.status == StageStatus::Failed {
                        stage_lines(log, &s.name, FAILED_STAGE_LINES)
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            csrf,
        }
    }
}

/// The last `n` lines the log file holds for `stage` (`[stage] text`).
pub fn stage_lines(log: &str, stage: &str, n: usize) -> Vec<String> {
    let prefix = format!("[{stage}] ");
    let mut lines: Vec<String> = log
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix(&prefix))
        .take(n)
        .map(str::to_owned)
        .collect();
    lines.reverse();
    lines
}

#[derive(Debug, Clone)]
pub struct DeploymentPage {
    pub viewer: Viewer,
    pub head: Head,
    /// The log from byte `log_from` to `log_end`: the whole log when
    /// `log_from` is 0, else its end (the rest is a link away).
    pub log: String,
    pub log_from: u64,
    pub log_end: u64,
}

/// The mark before a stage: ✓ done, ✗ failed.
pub fn mark(status: StageStatus) -> &'static str {
    match status {
        StageStatus::Completed => "✓",
        StageStatus::Failed => "✗",
        StageStatus::Running => "…",
        StageStatus::Pending => "·",
    }
}

/// What can be done to a deployment in `state` (the control plane refuses
/// the rest, so the buttons are not offered).
pub fn actions(state: DeploymentState) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if matches!(state, DeploymentState::Running | DeploymentState::Stopped) {
        out.push(("restart", "Restart"));
    }
    if state == DeploymentState::Running {
        out.push(("stop", "Stop"));
    }
    out.push(("delete", "Delete"));
    out
}

/// The live stream's address; it continues the log at `from`.
pub fn live_url(id: &str, from: u64) -> String {
    format!("/ws/live/deployments/{id}?from={from}")
}

pub fn render(p: &DeploymentPage) -> Markup {
    let h = &p.head;
    let title = format!("{} · {}", h.repository, h.sandbox);
    page(
        &title,
        Some(&p.viewer),
        html! {
            (head(h, false))
            section.card {
                h2 { "Log" }
                @if p.log_from > 0 {
                    p.note {
                        "Earlier lines are left out here: "
                        a href={ "/api/v1/deployments/" (h.id) "/logs" } { "the whole log" }
                    }
                }
                div #log-box .logbox {
                    pre #log { (p.log) div #log-live {} }
                }
                div #live hx-ext="ws" ws-connect=(live_url(&h.id, p.log_end)) {}
            }
        },
    )
}

/// State, details, stages and actions; `oob` marks it for an out-of-band
/// swap when pushed over the live stream.
pub fn head(h: &Head, oob: bool) -> Markup {
    html! {
        div #deployment-head hx-swap-oob=[oob.then_some("true")] data-state=(h.state.as_str()) {
            h1 {
                (h.repository) " in " (h.sandbox) " "
                span #state class=(state_class(h.state)) { (h.state.as_str()) }
            }
            section.card {
                dl {
                    dt { "Branch" } dd { code { (h.branch) } }
                    dt { "Commit" } dd { code { (h.commit.as_deref().unwrap_or("—")) } }
                    dt { "Port" } dd { (h.port) }
                    dt { "By" } dd { (h.by) }
                    dt { "Started" } dd { (h.started) }
                    dt { "Completed" } dd { (h.completed) }
                    dt { "Deployment" } dd { code { (h.id) } }
                    @if let Some(reason) = &h.reason {
                        dt { "Reason" } dd.error { (reason) }
                    }
                }
                div.actions {
                    @for (action, label) in actions(h.state) {
                        form method="post" action={ "/deployments/" (h.id) "/" (action) } {
                            input type="hidden" name=(crate::security::CSRF_FIELD) value=(h.csrf);
                            button type="submit" class={ "btn btn-" (action) } { (label) }
                        }
                    }
                }
            }
            section.card {
                h2 { "Stages" }
                ol #stages .stages {
                    @for s in &h.stages {
                        li class={ "stage stage-" (s.status.as_str()) } data-stage=(s.name) {
                            span.mark aria-label=(s.status.as_str()) { (mark(s.status)) }
                            span.name { (s.name) }
                            @if let Some(took) = &s.took {
                                " " span.took { (took) }
                            }
                            @if let Some(reason) = &s.reason {
                                " — " span.reason { (reason) }
                            }
                            @if !s.log.is_empty() {
                                pre.stage-log {
                                    @for line in &s.log { (line) "\n" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// First frame of a (re)connected stream: the log from where the page's
/// copy ends up to now, replacing whatever a previous connection appended.
pub fn log_reset(text: &str) -> Markup {
    html! { div #log-live hx-swap-oob="true" { (chunk(text)) } }
}

/// Every later frame: only what is new.
pub fn log_append(text: &str) -> Markup {
    html! { div hx-swap-oob="beforeend:#log-live" { (chunk(text)) } }
}

/// Each frame's lines in a block of their own: appending to one run of text
/// makes the browser lay out the whole log again at every frame (minutes of
/// main-thread work for 100,000 lines), a new block costs only its own lines.
fn chunk(text: &str) -> Markup {
    html! { @if !text.is_empty() { div.log-chunk { (text) } } }
}

/// The deployment was deleted while the page was open.
pub fn gone() -> Markup {
    html! {
        div #deployment-head hx-swap-oob="true" data-state="DELETED" {
            p.error role="alert" { "This deployment was deleted." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, status: StageStatus, reason: Option<&str>, log: &[&str]) -> StageRow {
        StageRow {
            name: name.into(),
            status,
            reason: reason.map(Into::into),
            took: (status == StageStatus::Completed).then(|| "1.2 s".into()),
            log: log.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    fn failed_page() -> DeploymentPage {
        DeploymentPage {
            viewer: Viewer {
                name: "achmad".into(),
                csrf: "t0k".into(),
            },
            head: Head {
                id: "d-1".into(),
                sandbox: "qa".into(),
                repository: "eredar".into(),
                branch: "feature/x".into(),
                by: "achmad".into(),
                state: DeploymentState::Failed,
                port: 9001,
                commit: None,
                reason: Some("go build exited with status 1".into()),
                started: "2024-05-01 09:30:12 UTC".into(),
                completed: "2024-05-01 09:31:00 UTC".into(),
                stages: vec![
                    stage("git fetch", StageStatus::Completed, None, &[]),
                    stage(
                        "go build",
                        StageStatus::Failed,
                        Some("exit status 1"),
                        &["./main.go:3: undefined: <nope>"],
                    ),
                    stage("start container", StageStatus::Pending, None, &[]),
                ],
                csrf: "t0k".into(),
            },
            log: "[go build] <script>alert(1)</script>\n".into(),
            log_from: 0,
            log_end: 38,
        }
    }

    #[test]
    fn stages_carry_a_tick_or_a_cross_with_timings() {
        let html = render(&failed_page()).into_string();
        assert!(html.contains(r#"<li class="stage stage-completed" data-stage="git fetch"><span class="mark" aria-label="completed">✓</span><span class="name">git fetch</span> <span class="took">1.2 s</span>"#), "{html}");
        assert!(html.contains(r#"✗</span><span class="name">go build</span>"#));
        assert!(html.contains("exit status 1"));
        assert!(html.contains("go build exited with status 1"));
    }

    #[test]
    fn the_failed_stage_shows_its_log_escaped() {
        let html = render(&failed_page()).into_string();
        assert!(html.contains(r#"<pre class="stage-log">./main.go:3: undefined: &lt;nope&gt;"#));
    }

    #[test]
    fn the_log_is_escaped_and_followed_live_from_its_end() {
        let html = render(&failed_page()).into_string();
        assert!(html.contains("[go build] &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains(r#"ws-connect="/ws/live/deployments/d-1?from=38""#));
        assert!(html.contains(r#"<div id="log-live"></div>"#));
        assert!(!html.contains("the whole log"));
    }

    #[test]
    fn a_cut_log_links_to_the_whole_log() {
        let mut p = failed_page();
        p.log_from = 4096;
        let html = render(&p).into_string();
        assert!(html.contains(r#"href="/api/v1/deployments/d-1/logs""#));
    }

    #[test]
    fn actions_fit_the_state_and_carry_the_csrf_token() {
        let mut p = failed_page();
        p.head.state = DeploymentState::Running;
        let html = render(&p).into_string();
        for a in ["restart", "stop", "delete"] {
            assert!(
                html.contains(&format!(r#"action="/deployments/d-1/{a}""#)),
                "{a}"
            );
        }
        assert!(html.matches(r#"name="_csrf" value="t0k""#).count() >= 4);
        let failed = render(&failed_page()).into_string();
        assert!(!failed.contains("/d-1/stop") && !failed.contains("/d-1/restart"));
        assert!(failed.contains("/d-1/delete"));
    }

    #[test]
    fn live_fragments_swap_by_id() {
        let h = head(&failed_page().head, true).into_string();
        assert!(
            h.starts_with(r#"<div id="deployment-head" hx-swap-oob="true""#),
            "{h}"
        );
        assert!(
            !head(&failed_page().head, false)
                .into_string()
                .contains("hx-swap-oob")
        );
        assert_eq!(
            log_reset("a<b\n").into_string(),
            r#"<div id="log-live" hx-swap-oob="true"><div class="log-chunk">a&lt;b
</div></div>"#
        );
        assert_eq!(
            log_reset("").into_string(),
            r#"<div id="log-live" hx-swap-oob="true"></div>"#
        );
        assert_eq!(
            log_append("</div>").into_string(),
            r#"<div hx-swap-oob="beforeend:#log-live"><div class="log-chunk">&lt;/div&gt;</div></div>"#
        );
    }

    #[test]
    fn stage_lines_are_the_stage_s_last_lines() {
        let log = "[git fetch] a\n[go build] b\n[go build] c\n[go build] d\n[control] e\n";
        assert_eq!(stage_lines(log, "go build", 2), ["c", "d"]);
        assert!(stage_lines(log, "start container", 5).is_empty());
    }
}
