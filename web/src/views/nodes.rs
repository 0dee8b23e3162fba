use maud::{Markup, html};

use super::layout::page;
use super::{Viewer, time};

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub name: String,
    pub kind: String,
    pub connected: bool,
    pub last_seen: String,
    pub address: String,
    pub version: String,
    pub repositories: Vec<String>,
}

impl From<&sdp_control::NodeStatus> for NodeRow {
    fn from(n: &sdp_control::NodeStatus) -> Self {
        NodeRow {
            name: n.name.clone(),
            kind: format!("{:?}", n.kind).to_ascii_lowercase(),
            connected: n.connected,
            last_seen: time(Some(n.last_seen)),
            address: n.address.clone(),
            version: n.version.clone(),
            repositories: n.repositories.clone(),
        }
    }
}

/// The nodes page's live stream.
pub const LIVE: &str = "/ws/live/nodes";

pub fn render(viewer: &Viewer, rows: &[NodeRow]) -> Markup {
    page(
        "Nodes",
        Some(viewer),
        html! {
            h1 { "Nodes" }
            (table(rows, false))
            div #nodes-live hx-ext="ws" ws-connect=(LIVE) {}
        },
    )
}

/// The nodes with their connection state; `oob` marks it for an
/// out-of-band swap when pushed over the live stream.
pub fn table(rows: &[NodeRow], oob: bool) -> Markup {
    html! {
        div #nodes hx-swap-oob=[oob.then_some("true")] {
            @if rows.is_empty() {
                p.empty.card { "No agent has announced itself yet." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th { "Node" } th { "Kind" } th { "Status" } th { "Last heartbeat" }
                            th { "Address" } th { "Version" } th { "Repositories" }
                        } }
                        tbody {
                            @for n in rows {
                                tr {
                                    td { (n.name) }
                                    td { (n.kind) }
                                    td {
                                        @if n.connected { span.state.state-running { "connected" } }
                                        @else { span.state.state-failed { "disconnected" } }
                                    }
                                    td { (n.last_seen) }
                                    td { code { (n.address) } }
                                    td { (n.version) }
                                    td { (n.repositories.join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_show_connection_and_heartbeat() {
        let v = Viewer {
            name: "a".into(),
            csrf: "t".into(),
        };
        let html = render(
            &v,
            &[NodeRow {
                name: "micro".into(),
                kind: "micro".into(),
                connected: false,
                last_seen: "2024-05-01 09:30:12 UTC".into(),
                address: "10.0.0.2".into(),
                version: "0.1.0".into(),
                repositories: vec!["account".into(), "<eredar>".into()],
            }],
        )
        .into_string();
        assert!(html.contains("disconnected"));
        assert!(html.contains("2024-05-01 09:30:12 UTC"));
        assert!(html.contains("account, &lt;eredar&gt;"));
        assert!(render(&v, &[]).into_string().contains("No agent"));
    }

    #[test]
    fn the_page_is_pushed_to_not_polled() {
        let v = Viewer {
            name: "a".into(),
            csrf: "t".into(),
        };
        let page = render(&v, &[]).into_string();
        assert!(!page.contains("hx-trigger"), "{page}");
        assert!(page.contains(r#"ws-connect="/ws/live/nodes""#));
        assert!(page.contains(r#"<div id="nodes">"#));
        let pushed = table(&[], true).into_string();
        assert!(
            pushed.starts_with(r#"<div id="nodes" hx-swap-oob="true">"#),
            "{pushed}"
        );
    }
}
