use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use crate::assets;
use crate::security::CSRF_FIELD;

/// The sections of the navigation bar, in order.
const NAV: &[(&str, &str)] = &[
    ("/sandboxes", "Sandboxes"),
    ("/", "Deployments"),
    ("/deploy", "Deploy"),
    ("/templates", "Templates"),
    ("/environments", "Environments"),
    ("/nodes", "Nodes"),
    ("/audit", "Audit"),
];

/// The hidden field every state-changing form carries.
pub fn csrf_field(v: &Viewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(v.csrf); }
}

/// The page shell: title, embedded assets, and the header with navigation,
/// the signed-in user and a logout button.
pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No inline styles or eval: the CSP forbids both.
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;
                title { (title) " · SDP" }
                link rel="stylesheet" href=(assets::url("app.css"));
                script src=(assets::url("htmx.min.js")) defer {}
                script src=(assets::url("ws.min.js")) defer {}
                script src=(assets::url("app.js")) defer {}
            }
            body {
                header {
                    a.brand href="/" { "SDP" }
                    @if let Some(v) = viewer {
                        nav {
                            @for (href, label) in NAV {
                                a href=(href) { (label) }
                            }
                        }
                        span.user { (v.name) }
                        form method="post" action="/logout" {
                            (csrf_field(v))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(name: &str) -> Viewer {
        Viewer {
            name: name.into(),
            csrf: "c0ffee".into(),
        }
    }

    #[test]
    fn the_shell_links_only_embedded_assets_and_escapes_the_user() {
        let html = page(
            "Deployments",
            Some(&viewer("<b>eve</b>")),
            html! { p { "hi" } },
        )
        .into_string();
        assert!(html.contains(&assets::url("app.css")));
        assert!(html.contains(&assets::url("htmx.min.js")));
        assert!(html.contains(&assets::url("ws.min.js")));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"));
        assert!(html.contains(r#"action="/logout""#));
        assert!(html.contains(r#"name="_csrf" value="c0ffee""#));
    }

    #[test]
    fn no_user_no_logout_button_nor_navigation() {
        let html = page("Sign in", None, html! {}).into_string();
        assert!(!html.contains("/logout"));
        assert!(!html.contains("<nav>"));
    }
}
