//! With authentication off, anything that can make this machine's browser send a request can
//! act as the built-in project. Two browser tricks reach a loopback server from a web page:
//! DNS rebinding (a name the page loaded from starts resolving to 127.0.0.1, so the browser
//! sends `Host: attacker.example` and lets the page read the answers) and cross-site writes (a
//! form or `fetch` that posts to us; the page cannot read the answer, but the write happens).
//! This guard refuses both. Non-browser clients (the SDKs, curl, the CLI) send a loopback
//! `Host` and no `Origin`, so they are unaffected; with authentication on it does nothing, as
//! a browser never attaches a bearer key on its own.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::error::ApiError;

/// What the guard lets through; built once from the settings.
#[derive(Debug, Clone)]
pub struct HostGuard {
    active: bool,
    /// Extra names (lower case, no port, no trailing dot) accepted as `Host`; `*` is any.
    allowed: Vec<String>,
}

impl HostGuard {
    pub fn new(auth_enabled: bool, allowed_hosts: &[String]) -> Self {
        Self {
            active: !auth_enabled,
            allowed: allowed_hosts
                .iter()
                .map(|h| normalise(h).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        if !self.active || is_probe(req.path()) {
            return Ok(());
        }
        // A request without a name to rebind (HTTP/1.0, no Host) was not sent by a browser.
        let Some(host) = request_host(req) else {
            return Ok(());
        };
        if !self.host_allowed(&host) {
            return Err(ApiError::HostNotAllowed {
                host: hostname(&host).to_owned(),
            });
        }
        if !is_safe(req.method()) && is_cross_site(req, &host) {
            return Err(ApiError::CrossSiteRequest);
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = normalise(hostname(host)).to_ascii_lowercase();
        is_loopback(&name) || self.allowed.iter().any(|a| a == "*" || *a == name)
    }
}

/// Wraps every route: refuses, before any handler runs, what `HostGuard` does not let through.
pub async fn middleware<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let refused = req
        .app_data::<web::Data<HostGuard>>()
        .and_then(|guard| guard.check(&req).err());
    match refused {
        Some(err) => {
            let (req, _) = req.into_parts();
            Ok(ServiceResponse::new(req, err.error_response()).map_into_right_body())
        }
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
    }
}

/// Liveness and readiness reveal nothing, and orchestrators probe them by address.
fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Host` (HTTP/1.1) or the URI's authority (HTTP/2), with its port.
fn request_host(req: &ServiceRequest) -> Option<String> {
    match req.headers().get(header::HOST) {
        Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        None => req.uri().authority().map(|a| a.as_str().to_owned()),
    }
}

/// Browsers say where a request comes from in `Sec-Fetch-Site` (all current ones) or at least
/// `Origin` (on every cross-origin write). `same-site` is refused too: another port on
/// localhost is the same site, yet another program's page.
fn is_cross_site(req: &ServiceRequest, host: &str) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(header::ORIGIN) {
        None => false,
        Some(origin) => {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            // `scheme://host[:port]`; "null" (a sandboxed or file page) has no authority.
            let authority = origin.split_once("://").map(|(_, a)| a);
            authority.is_none_or(|a| !a.eq_ignore_ascii_case(host))
        }
    }
}

/// The name or address in `host[:port]` / `[v6]:port`.
fn hostname(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn normalise(name: &str) -> &str {
    name.trim().trim_end_matches('.')
}

/// Loopback names and addresses, and subdomains of `localhost` (browsers resolve those to
/// loopback themselves, RFC 6761).
fn is_loopback(name: &str) -> bool {
    crate::config::is_loopback(name) || name.to_ascii_lowercase().ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn guard(allowed: &[&str]) -> HostGuard {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        HostGuard::new(false, &allowed)
    }

    fn code(guard: &HostGuard, req: TestRequest) -> Option<String> {
        guard
            .check(&req.to_srv_request())
            .err()
            .and_then(|e| e.code().map(str::to_owned))
    }

    #[test]
    fn loopback_names_and_addresses_pass_and_others_do_not() {
        let g = guard(&[]);
        for host in [
            "127.0.0.1:8080",
            "127.1.2.3",
            "localhost",
            "LocalHost:80",
            "localhost.",
            "console.localhost:8080",
            "[::1]:8080",
        ] {
            let req = TestRequest::get().insert_header(("host", host));
            assert_eq!(code(&g, req), None, "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:8080",
            "[::ffff:10.0.0.5]:80",
        ] {
            let req = TestRequest::get().insert_header(("host", host));
            assert_eq!(code(&g, req).as_deref(), Some("host_not_allowed"), "{host}");
        }
    }

    #[test]
    fn listed_names_pass_any_port_and_star_passes_all() {
        let g = guard(&["batch.internal", "10.0.0.5."]);
        for host in ["batch.internal", "BATCH.internal:8080", "10.0.0.5:80"] {
            let req = TestRequest::get().insert_header(("host", host));
            assert_eq!(code(&g, req), None, "{host}");
        }
        let req = TestRequest::get().insert_header(("host", "other.internal"));
        assert_eq!(code(&g, req).as_deref(), Some("host_not_allowed"));
        let req = TestRequest::get().insert_header(("host", "anything.example"));
        assert_eq!(code(&guard(&["*"]), req), None);
    }

    #[test]
    fn cross_site_writes_are_refused_and_reads_and_api_clients_are_not() {
        let g = guard(&[]);
        let post = || TestRequest::post().insert_header(("host", "127.0.0.1:8080"));
        let refused = Some("cross_site_request".to_owned());
        assert_eq!(code(&g, post()), None, "no browser headers: an API client");
        for site in ["cross-site", "same-site"] {
            let req = post().insert_header(("sec-fetch-site", site));
            assert_eq!(code(&g, req), refused, "{site}");
        }
        for site in ["same-origin", "none"] {
            let req = post().insert_header(("sec-fetch-site", site));
            assert_eq!(code(&g, req), None, "{site}");
        }
        let req = post().insert_header(("origin", "http://127.0.0.1:8080"));
        assert_eq!(code(&g, req), None, "same origin");
        for origin in ["http://evil.example", "http://127.0.0.1:3000", "null"] {
            let req = post().insert_header(("origin", origin));
            assert_eq!(code(&g, req), refused, "{origin}");
        }
        let req = TestRequest::get()
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("sec-fetch-site", "cross-site"));
        assert_eq!(
            code(&g, req),
            None,
            "a read: the browser keeps the answer from the page"
        );
    }

    #[test]
    fn authentication_on_or_a_probe_is_never_refused() {
        let on = HostGuard::new(true, &[]);
        let req = TestRequest::post()
            .insert_header(("host", "attacker.example"))
            .insert_header(("sec-fetch-site", "cross-site"));
        assert_eq!(code(&on, req), None);
        let req = TestRequest::get()
            .uri("/readyz")
            .insert_header(("host", "10.1.2.3:8080"));
        assert_eq!(code(&guard(&[]), req), None);
    }
}
