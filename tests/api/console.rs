//! The web console's assets: served by every replica from the binary, outside `/v1` (so they
//! load before the user has given a key), with a policy that allows no inline script.

use crate::helpers::{spawn_app_with, Expect};

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    // Auth on: the console itself must still load (it asks for the key).
    let app = spawn_app_with(|s| s.auth.enabled = true).await;
    let page = app.get("/console").expect_response(200).await;
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    // The only script is an external file of this origin.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no third-party URLs"
    );

    let scripts = ["app", "api", "dom", "checks", "batches", "files", "create"];
    let mut assets: Vec<(String, &str)> = vec![
        ("/console/".into(), "text/html"),
        ("/console/console.css".into(), "text/css"),
        ("/console/favicon.svg".into(), "image/svg+xml"),
    ];
    assets.extend(
        scripts
            .iter()
            .map(|s| (format!("/console/{s}.js"), "text/javascript")),
    );
    for (path, kind) in &assets {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(
            res.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    for s in scripts {
        let js = app.get(&format!("/console/{s}.js")).send().await.unwrap();
        let js = js.text().await.unwrap();
        // No HTML parsing of data anywhere, and no imports from elsewhere.
        for sink in [
            ".innerHTML",
            ".outerHTML",
            "insertAdjacentHTML(",
            "document.write(",
            "eval(",
        ] {
            assert!(!js.contains(sink), "{s}.js uses {sink}");
        }
        for line in js.lines().filter(|l| l.starts_with("import ")) {
            assert!(line.contains("from './"), "{s}.js: {line}");
        }
    }
    app.get("/console/secret.txt").expect_response(404).await;
    app.get("/console/..%2FCargo.toml")
        .expect_response(404)
        .await;
}
