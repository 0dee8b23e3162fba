use maud::{Markup, html};
use sdp_contract::DeploymentState;
use sdp_control::Deployment;

use super::layout::page;
use super::{Viewer, state_class, time};

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

/// The history's filters, as typed (empty means any).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Filters {
    pub sandbox: String,
    pub repository: String,
    pub user: String,
    pub state: String,
}

impl Filters {
    /// The history page with these filters.
    pub fn url(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("sandbox", &self.sandbox),
            ("repository", &self.repository),
            ("user", &self.user),
            ("state", &self.state),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect();
        if pairs.is_empty() {
            return "/".into();
        }
        format!(
            "/?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    }
}

pub struct DeploymentsPage {
    pub viewer: Viewer,
    pub filters: Filters,
    pub rows: Vec<Row>,
}

const STATES: [DeploymentState; 4] = [
    DeploymentState::Queued,
    DeploymentState::Running,
    DeploymentState::Failed,
    DeploymentState::Stopped,
];

pub fn render(p: &DeploymentsPage) -> Markup {
    let f = &p.filters;
    page(
        "Deployments",
        Some(&p.viewer),
        html! {
            h1 { "Deployments" }
            form.filters method="get" action="/" {
                input name="sandbox" placeholder="sandbox" value=(f.sandbox) aria-label="sandbox";
                input name="repository" placeholder="service" value=(f.repository) aria-label="service";
                input name="user" placeholder="user" value=(f.user) aria-label="user";
                select name="state" aria-label="state" {
                    option value="" { "any state" }
                    @for s in STATES {
                        option value=(s.as_str()) selected[f.state == s.as_str()] { (s.as_str()) }
                    }
                }
                button type="submit" { "Filter" }
            }
            // The list refreshes itself, so states change without a reload.
            div #history hx-get=(f.url()) hx-trigger="every 3s" hx-select="#history" hx-swap="outerHTML" {
                (table(&p.rows))
            }
        },
    )
}

fn table(rows: &[Row]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty.card { "No deployments yet." }
        } @else {
            div.scroll {
                table {
                    thead {
                        tr {
                            th { "State" } th { "Sandbox" } th { "Service" } th { "Branch" }
                            th { "Port" } th { "By" } th { "Created" }
                        }
                    }
                    tbody {
                        @for r in rows {
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
        }
    }
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

    fn viewer() -> Viewer {
        Viewer {
            name: "achmad".into(),
            csrf: "t".into(),
        }
    }

    #[test]
    fn rows_link_to_their_deployment_and_escape_text() {
        let html = render(&DeploymentsPage {
            viewer: viewer(),
            filters: Filters::default(),
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
    fn filters_are_kept_in_the_form() {
        let html = render(&DeploymentsPage {
            viewer: viewer(),
            filters: Filters {
                sandbox: "qa\"".into(),
                state: "FAILED".into(),
                ..Default::default()
            },
            rows: vec![],
        })
        .into_string();
        assert!(
            html.contains(r#"name="sandbox" placeholder="sandbox" value="qa&quot;""#),
            "{html}"
        );
        assert!(html.contains(r#"<option value="FAILED" selected>FAILED</option>"#));
        assert!(html.contains("No deployments yet."));
        assert!(
            html.contains(r#"hx-get="/?sandbox=qa%22&amp;state=FAILED""#),
            "{html}"
        );
    }
}
