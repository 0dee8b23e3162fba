use maud::{Markup, html};

use super::layout::page;

/// The sign-in form; after a failed attempt, with the reason and the user
/// name typed (never the password).
#[derive(Debug, Default)]
pub struct LoginPage {
    pub username: String,
    pub error: Option<String>,
}

pub fn render(p: &LoginPage) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            form.login.card method="post" action="/login" {
                h1 { "Sign in with Bitbucket" }
                @if let Some(error) = &p.error {
                    p.error role="alert" { (error) }
                }
                label for="username" { "Username" }
                input #username name="username" type="text" autocomplete="username"
                    required autofocus value=(p.username);
                label for="password" { "Password" }
                input #password name="password" type="password"
                    autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_attempt_shows_the_reason_and_keeps_the_user_name() {
        let html = render(&LoginPage {
            username: "achmad\"><script>".into(),
            error: Some("Bitbucket rejected the username or password".into()),
        })
        .into_string();
        assert!(html.contains("Bitbucket rejected the username or password"));
        assert!(
            html.contains(r#"value="achmad&quot;&gt;&lt;script&gt;""#),
            "{html}"
        );
        assert!(html.contains(r#"type="password""#));
        assert!(html.contains(r#"action="/login""#));
    }

    #[test]
    fn a_fresh_form_has_no_error() {
        let html = render(&LoginPage::default()).into_string();
        assert!(!html.contains("role=\"alert\""));
    }
}
