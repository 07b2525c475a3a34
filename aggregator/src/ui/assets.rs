//! The UI's stylesheet, script and icon, compiled into the binary and served
//! from `/ui/assets/`; browsers revalidate them by ETag (a CRC of the bytes).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { name: "herd.css", content_type: "text/css; charset=utf-8", body: include_str!("assets/herd.css") },
    Asset { name: "herd.js", content_type: "text/javascript; charset=utf-8", body: include_str!("assets/herd.js") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_str!("assets/favicon.svg") },
];

/// A tag that changes whenever any asset does: pages link `?v=TAG` so a new
/// binary's assets are fetched at once.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = crc32fast::Hasher::new();
        for asset in ASSETS {
            hasher.update(asset.body.as_bytes());
        }
        format!("{:08x}", hasher.finalize())
    })
}

pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let etag = format!("\"{:08x}\"", crc32fast::hash(asset.body.as_bytes()));
    let cache = [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, cache, [(header::ETAG, etag)]).into_response();
    }
    (cache, [(header::CONTENT_TYPE, asset.content_type.to_owned()), (header::ETAG, etag)], asset.body).into_response()
}
