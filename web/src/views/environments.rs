//! Environments: variables in the clear, secrets write-only (their names and
//! a mask, never a value, not even the one just typed), files by path.

use maud::{Markup, html};

use super::layout::{csrf_field, page};
use super::{Viewer, time};

#[derive(Debug, Clone)]
pub struct EnvCard {
    pub name: String,
    pub variables: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub files: Vec<String>,
    pub updated: String,
}

impl From<&sdp_control::environments::EnvironmentView> for EnvCard {
    fn from(e: &sdp_control::environments::EnvironmentView) -> Self {
        EnvCard {
            name: e.name.clone(),
            variables: e
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            secrets: e.secrets.clone(),
            files: e.files.keys().cloned().collect(),
            updated: time(Some(e.updated_at)),
        }
    }
}

pub struct EnvironmentsPage {
    pub viewer: Viewer,
    pub environments: Vec<EnvCard>,
    pub error: Option<String>,
}

/// `KEY=VALUE` lines, as the variables textarea shows them.
pub fn lines(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

pub fn render(p: &EnvironmentsPage) -> Markup {
    let v = &p.viewer;
    page(
        "Environments",
        Some(v),
        html! {
            h1 { "Environments" }
            @if let Some(e) = &p.error {
                p.error role="alert" { (e) }
            }
            @for e in &p.environments {
                section.card id={ "env-" (e.name) } {
                    h2 { (e.name) " " small.muted { "updated " (e.updated) } }
                    form.stack method="post" action={ "/environments/" (e.name) } {
                        (csrf_field(v))
                        label { "Variables (KEY=VALUE per line)" }
                        textarea name="variables" rows="4" spellcheck="false" { (lines(&e.variables)) }
                        label { "Secrets" }
                        @if e.secrets.is_empty() {
                            p.muted { "none" }
                        } @else {
                            ul.secrets {
                                @for s in &e.secrets {
                                    li {
                                        code { (s) } " = " span.masked { "••••••••" }
                                        label.inline {
                                            input type="checkbox" name="remove_secret" value=(s);
                                            " remove"
                                        }
                                    }
                                }
                            }
                        }
                        textarea name="secrets" rows="2" spellcheck="false" autocomplete="off"
                            placeholder="KEY=VALUE to set or replace; values are never shown again" {}
                        @if !e.files.is_empty() {
                            label { "Files" }
                            ul { @for f in &e.files { li { code { (f) } } } }
                        }
                        button.primary type="submit" { "Save" }
                    }
                    form method="post" action={ "/environments/" (e.name) "/delete" } {
                        (csrf_field(v))
                        button.btn-delete type="submit" { "Delete " (e.name) }
                    }
                }
            }
            section.card {
                h2 { "New environment" }
                form.stack method="post" action="/environments" {
                    (csrf_field(v))
                    label for="env-name" { "Name" }
                    input #env-name name="name" required placeholder="e.g. dev";
                    label for="env-vars" { "Variables (KEY=VALUE per line)" }
                    textarea #env-vars name="variables" rows="3" spellcheck="false" {}
                    label for="env-secrets" { "Secrets (KEY=VALUE per line, write-only)" }
                    textarea #env-secrets name="secrets" rows="2" spellcheck="false" autocomplete="off" {}
                    button.primary type="submit" { "Create" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_show_as_names_and_a_mask_only() {
        let html = render(&EnvironmentsPage {
            viewer: Viewer {
                name: "a".into(),
                csrf: "t".into(),
            },
            environments: vec![EnvCard {
                name: "dev".into(),
                variables: vec![("DB_HOST".into(), "db<1>".into())],
                secrets: vec!["DB_PASSWORD".into()],
                files: vec!["config/app.yml".into()],
                updated: "now".into(),
            }],
            error: None,
        })
        .into_string();
        assert!(html.contains("DB_HOST=db&lt;1&gt;\n"));
        assert!(html.contains("<code>DB_PASSWORD</code> = <span class=\"masked\">"));
        assert!(html.contains(r#"name="remove_secret" value="DB_PASSWORD""#));
        assert!(html.contains("config/app.yml"));
        assert!(html.contains(r#"action="/environments/dev/delete""#));
    }
}
