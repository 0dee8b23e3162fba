use maud::{Markup, html};

use super::layout::page;

pub struct ErrorPage {
    pub viewer: Option<super::Viewer>,
    pub title: String,
    pub message: String,
}

pub fn render(p: &ErrorPage) -> Markup {
    page(
        &p.title,
        p.viewer.as_ref(),
        html! {
            h1 { (p.title) }
            p.error { (p.message) }
            p { a href="/" { "Back to deployments" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_shown_escaped() {
        let html = render(&ErrorPage {
            viewer: None,
            title: "Not found".into(),
            message: "deployment \"<x>\" not found".into(),
        })
        .into_string();
        assert!(html.contains("deployment &quot;&lt;x&gt;&quot; not found"));
    }
}
