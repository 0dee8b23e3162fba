use maud::{Markup, html};
use sdp_contract::DeploymentState;
use sdp_control::Deployment;

use super::layout::page;
use super::{state_class, time};

/// One row of the deployment history.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    pub user: String,
    pub state: DeploymentState,
    pub port: u16,
    pub created: String,
}

impl From<&Deployment> for Row {
    fn from(d: &Deployment) -> Self {
        Row {
            id: d.id.clone(),
            sandbox: d.sandbox.clone(),
            repository: d.repository.clone(),
            branch: d.branch.clone(),
            user: d.user.clone(),
            state: d.state,
            port: d.port,
            created: time(Some(d.created_at)),
        }
    }
}

pub struct DeploymentsPage {
    pub user: String,
    pub rows: Vec<Row>,
}

pub fn render(p: &DeploymentsPage) -> Markup {
    page(
        "Deployments",
        Some(&p.user),
        None,
        html! {
            h1 { "Deployments" }
            @if p.rows.is_empty() {
                p.empty.card { "No deployments yet." }
            } @else {
                table {
                    thead {
                        tr {
                            th { "State" } th { "Sandbox" } th { "Service" } th { "Branch" }
                            th { "Port" } th { "By" } th { "Created" }
                        }
                    }
                    tbody {
                        @for r in &p.rows {
                            tr {
                                td { span class=(state_class(r.state)) { (r.state.as_str()) } }
                                td { (r.sandbox) }
                                td { a href={ "/deployments/" (r.id) } { (r.repository) } }
                                td { code { (r.branch) } }
                                td { (r.port) }
                                td { (r.user) }
                                td { (r.created) }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(branch: &str, state: DeploymentState) -> Row {
        Row {
            id: "0b1c".into(),
            sandbox: "qa-login".into(),
            repository: "eredar".into(),
            branch: branch.into(),
            user: "achmad".into(),
            state,
            port: 9001,
            created: "2024-05-01 09:30:12 UTC".into(),
        }
    }

    #[test]
    fn rows_link_to_their_deployment_and_escape_text() {
        let html = render(&DeploymentsPage {
            user: "achmad".into(),
            rows: vec![
                row("feature/<img src=x>", DeploymentState::Running),
                row("main", DeploymentState::Failed),
            ],
        })
        .into_string();
        assert!(html.contains(r#"href="/deployments/0b1c""#));
        assert!(html.contains("feature/&lt;img src=x&gt;"));
        assert!(!html.contains("<img"));
        assert!(html.contains(r#"class="state state-running""#));
        assert!(html.contains(">FAILED<"));
        assert!(html.contains("9001"));
    }

    #[test]
    fn an_empty_history_says_so() {
        let html = render(&DeploymentsPage {
            user: "achmad".into(),
            rows: vec![],
        })
        .into_string();
        assert!(html.contains("No deployments yet."));
    }
}
