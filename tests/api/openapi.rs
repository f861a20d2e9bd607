//! `/openapi.json` against the router it describes, at run time: every documented operation
//! is served, and no other method on a documented path is. (The document is built by
//! registering the same handlers the server registers, `src/api/openapi.rs`.)

use serde_json::Value;

use crate::helpers::spawn_app;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A documented path with placeholder ids (`/v1/files/{file_id}` → `/v1/files/x`).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method_on_its_paths() {
    let app = spawn_app().await;
    let res = app.get("/openapi.json").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let spec: Value = res.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 31, "{:?}", paths.keys());

    let mut served = 0;
    for (path, item) in paths {
        let url = concrete(path);
        for method in METHODS {
            let documented = item.get(method.to_lowercase()).is_some();
            // An event stream of a batch that does not exist answers 404 at once.
            let res = app.request(method, &url).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = if res.headers()["content-type"] == "application/json" {
                res.json().await.unwrap()
            } else {
                Value::Null
            };
            let message = body["error"]["message"].as_str().unwrap_or_default();
            let unrouted = status == 405 || message.starts_with("Invalid URL (");
            if documented {
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not served: {status} {body}"
                );
                served += 1;
            } else {
                assert!(
                    unrouted,
                    "{method} {path} is served but not documented: {status} {body}"
                );
            }
        }
    }
    assert_eq!(served, 41);
}
