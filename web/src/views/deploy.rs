//! The deploy form: a sandbox, a repository, a branch picked from the
//! repository's live branch list (searchable as you type), optionally an
//! environment and a port.

use maud::{Markup, html};

use super::Viewer;
use super::layout::{csrf_field, page};

/// What was typed, kept when the form comes back with an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct DeployForm {
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    pub environment: String,
    pub port: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub name: String,
    pub commit: String,
}

pub struct DeployPage {
    pub viewer: Viewer,
    pub form: DeployForm,
    pub repositories: Vec<String>,
    pub sandboxes: Vec<String>,
    pub environments: Vec<String>,
    /// Branches of `form.repository`, when known.
    pub branches: Vec<Branch>,
    pub error: Option<String>,
}

pub fn render(p: &DeployPage) -> Markup {
    let f = &p.form;
    page(
        "Deploy",
        Some(&p.viewer),
        html! {
            h1 { "Deploy a service branch" }
            form #deploy .card .stack method="post" action="/deploy" {
                (csrf_field(&p.viewer))
                @if let Some(e) = &p.error {
                    p.error role="alert" { (e) }
                }
                label for="sandbox" { "Sandbox" }
                input #sandbox name="sandbox" required value=(f.sandbox) list="sandbox-list"
                    placeholder="e.g. qa-login" autocomplete="off";
                datalist #sandbox-list {
                    @for s in &p.sandboxes { option value=(s) {} }
                }
                label for="repository" { "Repository" }
                select #repository name="repository" required
                    hx-get="/branches" hx-trigger="change" hx-target="#branch-list" hx-swap="outerHTML" {
                    option value="" { "choose…" }
                    @for r in &p.repositories {
                        option value=(r) selected[*r == f.repository] { (r) }
                    }
                }
                label for="branch" { "Branch" }
                input #branch name="branch" required value=(f.branch) list="branch-list"
                    placeholder="type to search" autocomplete="off";
                (branch_list(&p.branches))
                label for="environment" { "Environment" }
                select #environment name="environment" {
                    option value="" { "none" }
                    @for e in &p.environments {
                        option value=(e) selected[*e == f.environment] { (e) }
                    }
                }
                label for="port" { "Port (optional)" }
                input #port name="port" inputmode="numeric" value=(f.port) placeholder="allocated";
                button.primary type="submit" { "Deploy" }
            }
        },
    )
}

/// The branch suggestions; the browser filters them as the user types.
pub fn branch_list(branches: &[Branch]) -> Markup {
    html! {
        datalist #branch-list {
            @for b in branches {
                option value=(b.name) { (b.name) " · " (b.commit.get(..8).unwrap_or(&b.commit)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(error: Option<&str>) -> DeployPage {
        DeployPage {
            viewer: Viewer {
                name: "achmad".into(),
                csrf: "tok".into(),
            },
            form: DeployForm {
                sandbox: "qa".into(),
                repository: "account".into(),
                branch: "feature/<x>".into(),
                ..Default::default()
            },
            repositories: vec!["account".into(), "eredar".into()],
            sandboxes: vec!["qa".into()],
            environments: vec!["dev".into()],
            branches: vec![Branch {
                name: "main".into(),
                commit: "0123456789abcdef".into(),
            }],
            error: error.map(Into::into),
        }
    }

    #[test]
    fn the_form_keeps_what_was_typed_and_carries_the_token() {
        let html = render(&page_with(Some("branch \"x\" is not valid"))).into_string();
        assert!(html.contains(r#"<option value="account" selected>account</option>"#));
        assert!(html.contains(r#"value="feature/&lt;x&gt;""#));
        assert!(html.contains(r#"name="_csrf" value="tok""#));
        assert!(html.contains("branch &quot;x&quot; is not valid"));
        assert!(html.contains(r#"<option value="main">main · 01234567</option>"#));
    }

    #[test]
    fn picking_a_repository_loads_its_branches() {
        let html = render(&page_with(None)).into_string();
        assert!(html.contains(r#"hx-get="/branches""#));
        assert!(!html.contains("role=\"alert\""));
    }
}
