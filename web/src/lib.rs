//! SDP's dashboard, server-rendered with maud and served by the control plane
//! binary beside the JSON API. Every asset is embedded: the VMs have no
//! internet, so no CDN.
//!
//! This is the walking skeleton: sign in, the deployment history, and one
//! deployment's stages (✓ / ✗) and log. The live view (htmx over a
//! WebSocket) comes later.
//!
//! - [`views`]: pure functions from view models to markup, tested by
//!   rendering them.
//! - `pages`: the handlers; they ask [`sdp_control::ControlPlane`] for data
//!   and hand a view model to a view.
//!
//! The dashboard shares the API's session cookie, so signing in on either
//! signs in on both.

mod pages;
pub mod views;

use axum::Router;
use axum::routing::{get, post};
use sdp_control::ControlPlane;
use tower_http::limit::RequestBodyLimitLayer;

/// The dashboard's routes: `/`, `/login`, `/logout`, `/deployments/{id}` and
/// `/assets/app.css`.
pub fn router(cp: ControlPlane) -> Router {
    let max = cp.config().max_body_bytes;
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/assets/app.css", get(pages::stylesheet))
        .with_state(cp)
        .layer(RequestBodyLimitLayer::new(max))
}
