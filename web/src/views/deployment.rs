use maud::{Markup, html};
use sdp_contract::DeploymentState;
use sdp_control::{Deployment, StageStatus};

use super::layout::page;
use super::{state_class, time};

pub struct StageRow {
    pub name: String,
    pub status: StageStatus,
    pub reason: Option<String>,
}

pub struct DeploymentPage {
    pub user: String,
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
    pub log: String,
}

impl DeploymentPage {
    pub fn new(user: String, d: &Deployment, log: String) -> Self {
        DeploymentPage {
            user,
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
                })
                .collect(),
            log,
        }
    }
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

pub fn render(p: &DeploymentPage) -> Markup {
    // Until the live stream comes, a queued deployment reloads itself.
    let refresh = (p.state == DeploymentState::Queued).then_some(2);
    let title = format!("{} · {}", p.repository, p.sandbox);
    page(
        &title,
        Some(&p.user),
        refresh,
        html! {
            h1 {
                (p.repository) " in " (p.sandbox) " "
                span class=(state_class(p.state)) { (p.state.as_str()) }
            }
            section.card {
                dl {
                    dt { "Branch" } dd { code { (p.branch) } }
                    dt { "Commit" } dd { code { (p.commit.as_deref().unwrap_or("—")) } }
                    dt { "Port" } dd { (p.port) }
                    dt { "By" } dd { (p.by) }
                    dt { "Started" } dd { (p.started) }
                    dt { "Completed" } dd { (p.completed) }
                    dt { "Deployment" } dd { code { (p.id) } }
                    @if let Some(reason) = &p.reason {
                        dt { "Reason" } dd.error { (reason) }
                    }
                }
            }
            section.card {
                h2 { "Stages" }
                ol.stages {
                    @for s in &p.stages {
                        li class={ "stage-" (s.status.as_str()) } {
                            span.mark aria-label=(s.status.as_str()) { (mark(s.status)) }
                            (s.name)
                            @if let Some(reason) = &s.reason {
                                " — " span.reason { (reason) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Log" }
                pre.log { (p.log) }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, status: StageStatus, reason: Option<&str>) -> StageRow {
        StageRow {
            name: name.into(),
            status,
            reason: reason.map(Into::into),
        }
    }

    fn failed_page() -> DeploymentPage {
        DeploymentPage {
            user: "achmad".into(),
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
                stage("git fetch", StageStatus::Completed, None),
                stage("go build", StageStatus::Failed, Some("exit status 1")),
                stage("start container", StageStatus::Pending, None),
            ],
            log: "[go build] <script>alert(1)</script>\n".into(),
        }
    }

    #[test]
    fn stages_carry_a_tick_or_a_cross() {
        let html = render(&failed_page()).into_string();
        assert!(html.contains(r#"<li class="stage-completed"><span class="mark" aria-label="completed">✓</span>git fetch"#), "{html}");
        assert!(html.contains("✗</span>go build"));
        assert!(html.contains("exit status 1"));
        assert!(html.contains("go build exited with status 1"));
    }

    #[test]
    fn the_log_is_escaped() {
        let html = render(&failed_page()).into_string();
        assert!(html.contains("[go build] &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn only_a_queued_deployment_reloads_itself() {
        let mut p = failed_page();
        assert!(!render(&p).into_string().contains("refresh"));
        p.state = DeploymentState::Queued;
        assert!(render(&p).into_string().contains("http-equiv=\"refresh\""));
    }
}
