use maud::{Markup, html};

use super::layout::page;
use super::{Viewer, time};

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub at: String,
    pub user: String,
    pub action: String,
    pub ok: bool,
    pub error: Option<String>,
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    pub environment: String,
    pub deployment: Option<String>,
}

impl From<&sdp_control::storage::AuditRecord> for AuditRow {
    fn from(r: &sdp_control::storage::AuditRecord) -> Self {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        AuditRow {
            at: time(Some(r.at)),
            user: r.user.clone(),
            action: r.action.clone(),
            ok: r.outcome == "ok",
            error: r.error.clone(),
            sandbox: s(&r.sandbox),
            repository: s(&r.repository),
            branch: s(&r.branch),
            environment: s(&r.environment),
            deployment: r.deployment.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct AuditFilters {
    pub user: String,
    pub sandbox: String,
    pub repository: String,
}

pub fn render(viewer: &Viewer, f: &AuditFilters, rows: &[AuditRow]) -> Markup {
    page(
        "Audit",
        Some(viewer),
        html! {
            h1 { "Audit trail" }
            form.filters method="get" action="/audit" {
                input name="user" placeholder="user" value=(f.user) aria-label="user";
                input name="sandbox" placeholder="sandbox" value=(f.sandbox) aria-label="sandbox";
                input name="repository" placeholder="service" value=(f.repository) aria-label="service";
                button type="submit" { "Filter" }
            }
            @if rows.is_empty() {
                p.empty.card { "Nothing recorded yet." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th { "Time" } th { "User" } th { "Action" } th { "Outcome" }
                            th { "Sandbox" } th { "Service" } th { "Branch" } th { "Environment" }
                        } }
                        tbody {
                            @for r in rows {
                                tr {
                                    td { (r.at) }
                                    td { (r.user) }
                                    td {
                                        @if let Some(d) = &r.deployment {
                                            a href={ "/deployments/" (d) } { (r.action) }
                                        } @else { (r.action) }
                                    }
                                    td {
                                        @if r.ok { span.state.state-running { "ok" } }
                                        @else {
                                            span.state.state-failed { "error" }
                                            @if let Some(e) = &r.error { " " span.reason { (e) } }
                                        }
                                    }
                                    td { (r.sandbox) }
                                    td { (r.repository) }
                                    td { code { (r.branch) } }
                                    td { (r.environment) }
                                }
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

    #[test]
    fn records_show_who_did_what_and_how_it_ended() {
        let v = Viewer {
            name: "a".into(),
            csrf: "t".into(),
        };
        let html = render(
            &v,
            &AuditFilters::default(),
            &[AuditRow {
                at: "2024-05-01 09:30:12 UTC".into(),
                user: "achmad".into(),
                action: "deploy".into(),
                ok: false,
                error: Some("port <9001> taken".into()),
                sandbox: "qa".into(),
                repository: "account".into(),
                branch: "main".into(),
                environment: String::new(),
                deployment: Some("d-1".into()),
            }],
        )
        .into_string();
        assert!(html.contains(r#"<a href="/deployments/d-1">deploy</a>"#));
        assert!(html.contains("port &lt;9001&gt; taken"));
    }
}
