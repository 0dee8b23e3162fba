use maud::{DOCTYPE, Markup, html};

/// The page shell: title, embedded stylesheet, and the header with the
/// signed-in user and a logout button.
pub fn page(title: &str, user: Option<&str>, refresh_secs: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh_secs {
                    meta http-equiv="refresh" content=(secs);
                }
                title { (title) " · SDP" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body {
                header {
                    a href="/" { "SDP · Sandbox Deployment Platform" }
                    @if let Some(user) = user {
                        span.user { (user) }
                        form method="post" action="/logout" {
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

    #[test]
    fn the_shell_links_only_embedded_assets_and_escapes_the_user() {
        let html = page(
            "Deployments",
            Some("<b>eve</b>"),
            None,
            html! { p { "hi" } },
        )
        .into_string();
        assert!(html.contains(r#"href="/assets/app.css""#));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"));
        assert!(html.contains(r#"action="/logout""#));
        assert!(!html.contains("refresh"));
    }

    #[test]
    fn no_user_no_logout_button() {
        let html = page("Sign in", None, Some(3), html! {}).into_string();
        assert!(!html.contains("/logout"));
        assert!(html.contains(r#"http-equiv="refresh" content="3""#));
    }
}
