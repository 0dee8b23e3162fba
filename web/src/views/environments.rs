//! Environments: variables in the clear, secrets write-only (their names and
//! a mask, never a value, not even the one just typed), files by path, each
//! editable on its own.

use maud::{Markup, html};

use super::layout::{csrf_field, page};
use super::{Viewer, time};

#[derive(Debug, Clone)]
pub struct EnvCard {
    pub name: String,
    pub variables: Vec<(String, String)>,
    pub secrets: Vec<String>,
    /// Path in the container, content.
    pub files: Vec<(String, String)>,
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
            files: e
                .files
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            updated: time(Some(e.updated_at)),
        }
    }
}

/// A new file the store refused, put back in its form so nothing typed is
/// lost.
#[derive(Debug, Clone, Default)]
pub struct FileDraft {
    pub environment: String,
    pub path: String,
    pub content: String,
}

pub struct EnvironmentsPage {
    pub viewer: Viewer,
    pub environments: Vec<EnvCard>,
    pub message: Option<String>,
    pub error: Option<String>,
    pub draft: Option<FileDraft>,
}

/// `KEY=VALUE` lines, as the variables textarea shows them.
pub fn lines(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// A textarea's content as the browser will read it back: the HTML parser
/// drops one newline right after `<textarea>`, so one is put there for it to
/// drop and a file's own leading blank line survives an edit.
fn textarea_text(s: &str) -> String {
    format!("\n{s}")
}

/// The secrets part of an edit form (environment or template): names with a
/// mask and a remove box, and a write-only field to set or replace values.
pub fn secrets_editor(secrets: &[String]) -> Markup {
    html! {
        label { "Secrets" }
        @if secrets.is_empty() {
            p.muted { "none" }
        } @else {
            ul.secrets {
                @for s in secrets {
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
    }
}

fn files_editor(v: &Viewer, e: &EnvCard, draft: Option<&FileDraft>) -> Markup {
    let action = format!("/environments/{}/files", e.name);
    let (path, content) = draft.map_or(("", ""), |d| (d.path.as_str(), d.content.as_str()));
    html! {
        div.files id={ "files-" (e.name) } {
            h3 { "Files" }
            @if e.files.is_empty() { p.muted { "none" } }
            @for (path, content) in &e.files {
                details.file data-path=(path) {
                    summary { code { (path) } " " small.muted { (content.len()) " bytes" } }
                    form.stack.file-save method="post" action=(action) {
                        (csrf_field(v))
                        input type="hidden" name="path" value=(path);
                        textarea name="content" rows="6" spellcheck="false" aria-label={ "content of " (path) } {
                            (textarea_text(content))
                        }
                        button.primary type="submit" { "Save file" }
                    }
                    form.file-remove method="post" action=(action) {
                        (csrf_field(v))
                        input type="hidden" name="path" value=(path);
                        input type="hidden" name="remove" value="1";
                        button.btn-delete type="submit" { "Remove " (path) }
                    }
                }
            }
            form.stack.new-file method="post" action=(action) {
                (csrf_field(v))
                label for={ "file-path-" (e.name) } { "Path in the container" }
                input id={ "file-path-" (e.name) } name="path" required value=(path)
                    placeholder="/etc/app/config.yml" autocomplete="off";
                label for={ "file-content-" (e.name) } { "Content" }
                textarea id={ "file-content-" (e.name) } name="content" rows="4" spellcheck="false" {
                    (textarea_text(content))
                }
                button.primary type="submit" { "Add file" }
            }
        }
    }
}

pub fn render(p: &EnvironmentsPage) -> Markup {
    let v = &p.viewer;
    page(
        "Environments",
        Some(v),
        html! {
            h1 { "Environments" }
            @if let Some(m) = &p.message { p.notice role="status" { (m) } }
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
                        (secrets_editor(&e.secrets))
                        button.primary type="submit" { "Save" }
                    }
                    (files_editor(v, e, p.draft.as_ref().filter(|d| d.environment == e.name)))
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

    fn viewer() -> Viewer {
        Viewer {
            name: "a".into(),
            csrf: "t".into(),
        }
    }

    fn dev() -> EnvCard {
        EnvCard {
            name: "dev".into(),
            variables: vec![("DB_HOST".into(), "db<1>".into())],
            secrets: vec!["DB_PASSWORD".into()],
            files: vec![("config/app.yml".into(), "key: <v>\n".into())],
            updated: "now".into(),
        }
    }

    fn page_of(cards: Vec<EnvCard>) -> EnvironmentsPage {
        EnvironmentsPage {
            viewer: viewer(),
            environments: cards,
            message: None,
            error: None,
            draft: None,
        }
    }

    #[test]
    fn secrets_show_as_names_and_a_mask_only() {
        let html = render(&page_of(vec![dev()])).into_string();
        assert!(html.contains("DB_HOST=db&lt;1&gt;\n"));
        assert!(html.contains("<code>DB_PASSWORD</code> = <span class=\"masked\">"));
        assert!(html.contains(r#"name="remove_secret" value="DB_PASSWORD""#));
        assert!(html.contains("config/app.yml"));
        assert!(html.contains(r#"action="/environments/dev/delete""#));
    }

    #[test]
    fn each_file_can_be_saved_or_removed_and_new_ones_added() {
        let html = render(&page_of(vec![dev()])).into_string();
        let action = r#"action="/environments/dev/files""#;
        // Save, remove, add: three forms, each with the CSRF token.
        assert_eq!(html.matches(action).count(), 3, "{html}");
        let forms: Vec<&str> = html.split("<form").skip(1).collect();
        assert!(
            forms
                .iter()
                .all(|f| f.contains(r#"name="_csrf" value="t""#)),
            "a form without the CSRF token: {html}"
        );
        assert!(html.contains(r#"<details class="file" data-path="config/app.yml">"#));
        assert!(html.contains(r#"name="path" value="config/app.yml""#));
        assert!(html.contains(r#"name="remove" value="1""#));
        // The content is escaped, behind the newline the parser drops.
        assert!(html.contains(">\nkey: &lt;v&gt;\n</textarea>"), "{html}");
        assert!(html.contains(r#"id="file-path-dev""#));
    }

    #[test]
    fn a_refused_file_comes_back_in_its_form_with_the_reason() {
        let mut p = page_of(vec![dev()]);
        p.error = Some("invalid files path \"../x\"".into());
        p.draft = Some(FileDraft {
            environment: "dev".into(),
            path: "../x".into(),
            content: "<script>alert(1)</script>".into(),
        });
        let html = render(&p).into_string();
        assert!(html.contains(r#"role="alert""#));
        assert!(html.contains(r#"value="../x""#));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
    }

    #[test]
    fn a_saved_change_is_announced() {
        let mut p = page_of(vec![]);
        p.message = Some("dev: file <a> saved".into());
        let html = render(&p).into_string();
        assert!(html.contains(r#"<p class="notice" role="status">dev: file &lt;a&gt; saved</p>"#));
    }
}
