//! Every file the pages load, embedded in the binary: the VMs have no
//! internet, and a build must not need Node.js, so the vendored htmx files
//! are plain bytes here (see `assets/vendor/README.md` for where they come
//! from).
//!
//! Pages link `/assets/{hash}/{name}`: the hash changes with the content, so
//! those URLs are cached forever (`immutable`) and a new binary is picked up
//! at once. `/assets/{name}` stays for hand-typed URLs and old pages, with an
//! ETag so revalidation is a 304.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// First 16 hex digits of the SHA-256 of `bytes`.
    pub hash: String,
}

fn asset(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    let digest = Sha256::digest(bytes);
    Asset {
        name,
        content_type,
        bytes,
        hash: hex::encode(&digest[..8]),
    }
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    vec![
        asset(
            "app.css",
            "text/css; charset=utf-8",
            include_bytes!("../assets/app.css"),
        ),
        asset(
            "app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/app.js"),
        ),
        asset(
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/vendor/htmx.org-2.0.11/htmx.min.js"),
        ),
        asset(
            "ws.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../assets/vendor/htmx-ext-ws-2.0.4/ws.min.js"),
        ),
        asset(
            "htmx-LICENSE.txt",
            "text/plain; charset=utf-8",
            include_bytes!("../assets/vendor/htmx.org-2.0.11/LICENSE"),
        ),
        asset(
            "htmx-ext-ws-LICENSE.txt",
            "text/plain; charset=utf-8",
            include_bytes!("../assets/vendor/htmx-ext-ws-2.0.4/LICENSE"),
        ),
    ]
});

pub fn all() -> &'static [Asset] {
    &ASSETS
}

pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The content-addressed URL of an embedded asset.
///
/// # Panics
/// On a name that is not embedded: a typo in a view, caught by its tests.
pub fn url(name: &str) -> String {
    let a = find(name).unwrap_or_else(|| panic!("no embedded asset {name}"));
    format!("/assets/{}/{}", a.hash, a.name)
}

fn etag(a: &Asset) -> String {
    format!("\"{}\"", a.hash)
}

fn respond(a: &Asset, headers: &HeaderMap, cache: &'static str) -> Response {
    let tag = etag(a);
    let matches = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(ETAG, tag), (CACHE_CONTROL, cache.to_owned())],
        )
            .into_response();
    }
    (
        [
            (CONTENT_TYPE, a.content_type.to_owned()),
            (ETAG, tag),
            (CACHE_CONTROL, cache.to_owned()),
        ],
        a.bytes,
    )
        .into_response()
}

/// `GET /assets/{hash}/{name}`: a stale hash is a 404, never old bytes under
/// a new name or the reverse.
pub async fn hashed(Path((hash, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    match find(&name) {
        Some(a) if a.hash == hash => respond(a, &headers, "public, max-age=31536000, immutable"),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /assets/{name}`
pub async fn plain(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match find(&name) {
        Some(a) => respond(a, &headers, "public, max-age=0, must-revalidate"),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash() {
        let u = url("htmx.min.js");
        assert!(
            u.starts_with("/assets/") && u.ends_with("/htmx.min.js"),
            "{u}"
        );
        assert_eq!(u.len(), "/assets//htmx.min.js".len() + 16);
        assert_ne!(url("app.css"), url("app.js"));
    }

    #[test]
    fn vendored_files_are_the_pinned_releases() {
        let htmx = std::str::from_utf8(find("htmx.min.js").unwrap().bytes).unwrap();
        assert!(htmx.contains("version:\"2.0.11\""), "htmx 2.0.11");
        let ws = std::str::from_utf8(find("ws.min.js").unwrap().bytes).unwrap();
        assert!(ws.contains("defineExtension(\"ws\""));
        for lic in ["htmx-LICENSE.txt", "htmx-ext-ws-LICENSE.txt"] {
            let text = std::str::from_utf8(find(lic).unwrap().bytes).unwrap();
            assert!(text.contains("Permission to use, copy, modify"), "{lic}");
        }
    }
}
