//! The web console at `/console`: static assets compiled into the binary. It is a pure client
//! of the public `/v1` API (with the user's key), so it needs no privileged route, no build
//! step, and works offline.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{get, web, HttpResponse};

const INDEX: &str = include_str!("../../console/index.html");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/favicon.svg");
/// ES modules, imported by `app.js` (a module graph needs no bundler).
const SCRIPTS: [(&str, &str); 8] = [
    ("app.js", include_str!("../../console/app.js")),
    ("api.js", include_str!("../../console/api.js")),
    ("dom.js", include_str!("../../console/dom.js")),
    ("checks.js", include_str!("../../console/checks.js")),
    ("batches.js", include_str!("../../console/batches.js")),
    ("files.js", include_str!("../../console/files.js")),
    ("create.js", include_str!("../../console/create.js")),
    ("usage.js", include_str!("../../console/usage.js")),
];

/// Scripts and styles from this origin only (no inline script, no `eval`), requests only to
/// this origin, nothing may frame the console.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(index_slash).service(asset);
}

#[get("/console")]
async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

#[get("/console/")]
async fn index_slash() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

#[get("/console/{asset}")]
async fn asset(path: web::Path<String>) -> HttpResponse {
    let name = path.as_str();
    if let Some((_, script)) = SCRIPTS.iter().find(|(n, _)| *n == name) {
        return page("text/javascript; charset=utf-8", script);
    }
    match name {
        "console.css" => page("text/css; charset=utf-8", STYLE),
        "favicon.svg" => page("image/svg+xml", ICON),
        _ => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("not found"),
    }
}

fn page(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut res = HttpResponse::Ok().content_type(content_type).body(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Assets change with the binary; revalidating is cheap and avoids a stale script after an
    // upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
