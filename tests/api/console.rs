//! The web console's assets: served by every replica from the binary, outside `/v1` (so they
//! load before the user has given a key), with a policy that allows no inline script.

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    // Auth on: the console itself must still load (it asks for the key).
    let app = spawn_app_with(|s| s.auth.enabled = true).await;
    let page = app.get("/console").send().await.unwrap();
    assert_eq!(page.status(), 200);
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
    assert!(html.contains(r#"<script src="/console/console.js" defer></script>"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no third-party URLs"
    );

    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let res = app.get(path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(
            res.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    let js = app
        .get("/console/console.js")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for sink in [
        ".innerHTML",
        ".outerHTML",
        "insertAdjacentHTML(",
        "document.write(",
        "eval(",
    ] {
        assert!(!js.contains(sink), "console.js uses {sink}");
    }
    assert_eq!(
        app.get("/console/secret.txt")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.get("/console/..%2FCargo.toml")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
