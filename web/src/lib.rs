//! SDP's dashboard, server-rendered with maud and served by the control plane
//! binary beside the JSON API. Every asset is embedded: the VMs have no
//! internet, so no CDN.
//!
//! - [`views`]: pure functions from view models to markup, tested by
//!   rendering them.
//! - `pages`: the handlers; they ask [`sdp_control::ControlPlane`] for data
//!   and hand a view model to a view.
//! - `live`: the WebSockets that keep a deployment page and the lists
//!   current (htmx's WebSocket extension swaps the fragments they push).
//! - `security`: session, CSRF and origin checks; [`assets`]: embedded files.
//!
//! The dashboard shares the API's session cookie, so signing in on either
//! signs in on both.

pub mod assets;
mod live;
pub mod logfile;
mod pages;
pub mod security;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware;
use axum::routing::{get, post};
use sdp_control::ControlPlane;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::security::CsrfKey;

/// What every handler gets.
#[derive(Clone)]
pub struct Web {
    pub cp: ControlPlane,
    pub csrf: Arc<CsrfKey>,
    /// When set, live pages wake on the deployment's bus messages instead of
    /// waiting for their next poll.
    pub bus: Option<async_nats::Client>,
}

/// Scripts, styles and connections only from here; no inline code at all.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// The dashboard's routes, see [`router_with_bus`].
pub fn router(cp: ControlPlane) -> Router {
    build(Web {
        cp,
        csrf: Arc::new(CsrfKey::random()),
        bus: None,
    })
}

/// The dashboard, with live pages woken by `sdp.deploy.{id}.*` on `bus`
/// (the control plane's NATS connection) rather than by polling alone.
pub fn router_with_bus(cp: ControlPlane, bus: async_nats::Client) -> Router {
    build(Web {
        cp,
        csrf: Arc::new(CsrfKey::random()),
        bus: Some(bus),
    })
}

fn build(web: Web) -> Router {
    let max = web.cp.config().max_body_bytes;
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/deploy", get(pages::deploy_form).post(pages::deploy))
        .route("/branches", get(pages::branches))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/deployments/{id}/{action}", post(pages::deployment_action))
        .route("/nodes", get(pages::nodes))
        .route("/audit", get(pages::audit_page))
        .route(
            "/environments",
            get(pages::environments).post(pages::environment_create),
        )
        .route("/environments/{name}", post(pages::environment_update))
        .route(
            "/environments/{name}/delete",
            post(pages::environment_delete),
        )
        .route("/environments/{name}/files", post(pages::environment_file))
        .route(
            "/sandboxes",
            get(pages::sandboxes).post(pages::sandbox_create),
        )
        .route("/sandboxes/{name}", get(pages::sandbox))
        .route("/sandboxes/{name}/qr.svg", get(pages::sandbox_qr))
        .route("/sandboxes/{name}/{action}", post(pages::sandbox_action))
        .route(
            "/sandboxes/{name}/routes/{service}",
            post(pages::route_toggle),
        )
        .route(
            "/templates",
            get(pages::templates).post(pages::template_create),
        )
        .route("/templates/{name}/{action}", post(pages::template_action))
        .route("/ws/live/deployments/{id}", get(live::deployment))
        .route("/ws/live/{list}", get(live::list))
        .route("/ws/live/sandboxes/{name}", get(live::list))
        .route("/assets/{name}", get(assets::plain))
        .route("/assets/{hash}/{name}", get(assets::hashed))
        .layer(middleware::from_fn_with_state(web.clone(), security::guard))
        .with_state(web)
        .layer(RequestBodyLimitLayer::new(max))
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::if_not_present(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
}
