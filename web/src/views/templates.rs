//! Sandbox templates: list, create, delete, and a sandbox from one.

use maud::{Markup, html};

use super::Viewer;
use super::layout::{csrf_field, page};
use super::sandboxes::{Source, service_picker};

#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub name: String,
    pub environment: Option<String>,
    pub gateway_branch: String,
    pub services: Vec<(String, Source)>,
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
        }
    }
}

pub struct TemplatesPage {
    pub viewer: Viewer,
    pub templates: Vec<TemplateRow>,
    pub repositories: Vec<String>,
    pub environments: Vec<String>,
    pub error: Option<String>,
}

pub fn render(p: &TemplatesPage) -> Markup {
    let v = &p.viewer;
    page(
        "Templates",
        Some(v),
        html! {
            h1 { "Sandbox templates" }
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
                }
            }
            section.card {
                h2 { "New template" }
                form #new-template .stack method="post" action="/templates" {
                    (csrf_field(v))
                    label for="tp-name" { "Name" }
                    input #tp-name name="name" required autocomplete="off";
                    label for="tp-env" { "Environment" }
                    select #tp-env name="environment" {
                        option value="" { "none" }
                        @for e in &p.environments { option value=(e) { (e) } }
                    }
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

    #[test]
    fn a_template_offers_a_sandbox_from_it() {
        let html = render(&TemplatesPage {
            viewer: Viewer {
                name: "a".into(),
                csrf: "t".into(),
            },
            templates: vec![TemplateRow {
                name: "mobile".into(),
                environment: None,
                gateway_branch: "main".into(),
                services: vec![("account".into(), Source::Ocp)],
            }],
            repositories: vec!["account".into()],
            environments: vec![],
            error: None,
        })
        .into_string();
        assert!(html.contains(r#"action="/templates/mobile/sandbox""#));
        assert!(html.contains(r#"action="/templates/mobile/delete""#));
        assert!(html.contains("OCP"));
    }
}
