//! Sandbox templates: list, create, edit, delete, and a sandbox from one.

use maud::{Markup, html};

use super::Viewer;
use super::environments::{lines, secrets_editor};
use super::layout::{csrf_field, page};
use super::sandboxes::{Source, service_picker};

#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub name: String,
    pub environment: Option<String>,
    pub gateway_branch: String,
    pub services: Vec<(String, Source)>,
    /// The template's own overrides on top of its environment.
    pub variables: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

impl From<&sdp_control::sandboxes::TemplateView> for TemplateRow {
    fn from(t: &sdp_control::sandboxes::TemplateView) -> Self {
        TemplateRow {
            name: t.name.clone(),
            environment: t.environment.clone(),
            gateway_branch: t
                .gateway
                .get("branch")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned(),
            services: t
                .services
                .iter()
                .map(|(k, v)| (k.clone(), Source::from_value(v)))
                .collect(),
            variables: t
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            secrets: t.secrets.clone(),
        }
    }
}

pub struct TemplatesPage {
    pub viewer: Viewer,
    pub templates: Vec<TemplateRow>,
    pub repositories: Vec<String>,
    pub environments: Vec<String>,
    pub message: Option<String>,
    pub error: Option<String>,
}

/// The environment choices, the current one selected even if it has since
/// been deleted, so saving other changes does not silently drop it.
fn environment_select(id: &str, environments: &[String], current: Option<&str>) -> Markup {
    let missing = current.filter(|c| !environments.iter().any(|e| e == c));
    html! {
        select id=(id) name="environment" {
            option value="" selected[current.is_none()] { "none" }
            @for e in environments {
                option value=(e) selected[current == Some(e.as_str())] { (e) }
            }
            @if let Some(m) = missing {
                option value=(m) selected { (m) " (missing)" }
            }
        }
    }
}

fn edit_form(v: &Viewer, t: &TemplateRow, p: &TemplatesPage) -> Markup {
    let id = |what: &str| format!("tp-{}-{what}", t.name);
    html! {
        details.edit {
            summary { "Edit" }
            form.stack.edit-template id={ "edit-template-" (t.name) } method="post"
                action={ "/templates/" (t.name) "/update" } {
                (csrf_field(v))
                label for=(id("env")) { "Environment" }
                (environment_select(&id("env"), &p.environments, t.environment.as_deref()))
                label for=(id("gateway")) { "Gateway branch" }
                input id=(id("gateway")) name="gateway_branch" value=(t.gateway_branch) required autocomplete="off";
                (service_picker(&p.repositories, &t.services))
                label for=(id("vars")) { "Variables over the environment's (KEY=VALUE per line)" }
                textarea id=(id("vars")) name="variables" rows="3" spellcheck="false" { (lines(&t.variables)) }
                (secrets_editor(&t.secrets))
                button.primary type="submit" { "Save template" }
            }
        }
    }
}

pub fn render(p: &TemplatesPage) -> Markup {
    let v = &p.viewer;
    page(
        "Templates",
        Some(v),
        html! {
            h1 { "Sandbox templates" }
            @if let Some(m) = &p.message { p.notice role="status" { (m) } }
            @if let Some(e) = &p.error { p.error role="alert" { (e) } }
            @if p.templates.is_empty() { p.empty.card { "No templates yet." } }
            @for t in &p.templates {
                section.card id={ "template-" (t.name) } {
                    h2 { (t.name) }
                    ul.branches {
                        li { span.svc { "gateway" } " " code { (t.gateway_branch) } }
                        @for (svc, src) in &t.services {
                            li { span.svc { (svc) } " "
                                @match src { Source::Branch(b) => code { (b) }, Source::Ocp => span.muted { "OCP" } } }
                        }
                        @if let Some(e) = &t.environment { li { span.svc { "environment" } " " (e) } }
                    }
                    div.actions {
                        form.inline method="post" action={ "/templates/" (t.name) "/sandbox" } {
                            (csrf_field(v))
                            input name="name" required placeholder="new sandbox name" aria-label="new sandbox name" autocomplete="off";
                            button.primary type="submit" { "Create sandbox" }
                        }
                        form method="post" action={ "/templates/" (t.name) "/delete" } {
                            (csrf_field(v))
                            button.btn-delete type="submit" { "Delete" }
                        }
                    }
                    (edit_form(v, t, p))
                }
            }
            section.card {
                h2 { "New template" }
                form #new-template .stack method="post" action="/templates" {
                    (csrf_field(v))
                    label for="tp-name" { "Name" }
                    input #tp-name name="name" required autocomplete="off";
                    label for="tp-env" { "Environment" }
                    (environment_select("tp-env", &p.environments, None))
                    label for="tp-gateway" { "Gateway branch" }
                    input #tp-gateway name="gateway_branch" placeholder="main" autocomplete="off";
                    (service_picker(&p.repositories, &[]))
                    button.primary type="submit" { "Create template" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mobile() -> TemplateRow {
        TemplateRow {
            name: "mobile".into(),
            environment: Some("dev".into()),
            gateway_branch: "main".into(),
            services: vec![
                ("account".into(), Source::Branch("feature/<x>".into())),
                ("payment".into(), Source::Ocp),
            ],
            variables: vec![("LEVEL".into(), "debug".into())],
            secrets: vec!["API_TOKEN".into()],
        }
    }

    fn page_of(templates: Vec<TemplateRow>) -> TemplatesPage {
        TemplatesPage {
            viewer: Viewer {
                name: "a".into(),
                csrf: "t".into(),
            },
            templates,
            repositories: vec!["account".into(), "payment".into()],
            environments: vec!["dev".into(), "qa".into()],
            message: None,
            error: None,
        }
    }

    #[test]
    fn a_template_offers_a_sandbox_from_it() {
        let html = render(&page_of(vec![mobile()])).into_string();
        assert!(html.contains(r#"action="/templates/mobile/sandbox""#));
        assert!(html.contains(r#"action="/templates/mobile/delete""#));
        assert!(html.contains("OCP"));
    }

    #[test]
    fn the_edit_form_starts_from_the_template_s_current_choices() {
        let html = render(&page_of(vec![mobile()])).into_string();
        let start = html
            .find(r#"id="edit-template-mobile""#)
            .expect("edit form");
        let form = &html[start..html[start..].find("</form>").unwrap() + start];
        assert!(form.contains(r#"action="/templates/mobile/update""#));
        assert!(form.contains(r#"name="_csrf" value="t""#));
        assert!(
            form.contains(r#"<option value="dev" selected>dev</option>"#),
            "{form}"
        );
        assert!(form.contains(r#"<option value="qa">qa</option>"#));
        assert!(form.contains(r#"name="gateway_branch" value="main""#));
        assert!(
            form.contains(r#"name="branch.account" value="feature/&lt;x&gt;""#),
            "{form}"
        );
        assert!(form.contains(r#"<option value="ocp" selected>OCP</option>"#));
        assert!(form.contains("LEVEL=debug\n"));
        // Secrets by name and a remove box; no value anywhere.
        assert!(form.contains(r#"name="remove_secret" value="API_TOKEN""#));
        assert!(form.contains(r#"name="secrets""#));
    }

    #[test]
    fn a_deleted_environment_stays_selected_until_changed() {
        let mut t = mobile();
        t.environment = Some("gone".into());
        let html = render(&page_of(vec![t])).into_string();
        assert!(html.contains(r#"<option value="gone" selected>gone (missing)</option>"#));
        // The new-template form picks nothing by default.
        let new = &html[html.find(r#"id="new-template""#).unwrap()..];
        assert!(new.contains(r#"<option value="" selected>none</option>"#));
    }

    #[test]
    fn a_saved_template_is_announced_and_a_refusal_shown() {
        let mut p = page_of(vec![mobile()]);
        p.message = Some("template mobile saved".into());
        p.error = Some("invalid branch \"-x\"".into());
        let html = render(&p).into_string();
        assert!(html.contains(r#"<p class="notice" role="status">template mobile saved</p>"#));
        assert!(
            html.contains(r#"<p class="error" role="alert">invalid branch &quot;-x&quot;</p>"#)
        );
    }
}
