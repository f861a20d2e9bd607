//! The fake inference server as a real process, and servers whose worker runs against it.

use std::process::{Child, Command, Stdio};

use openbatch::config::Settings;
use serde_json::Value;

use super::app::{spawn_app_with, TestApp};

/// The fake OpenAI-compatible upstream (`src/bin/fake_upstream.rs`) as a real process.
pub struct FakeUpstream {
    pub base_url: String,
    child: Child,
}

impl FakeUpstream {
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake-upstream");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("fake-upstream prints its address");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            base_url: format!("{address}/v1"),
            child,
        }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.base_url.trim_end_matches("/v1")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Opens a gate: the lines whose `fake.gate` names it are answered (see fake-upstream).
    pub async fn open_gate(&self, name: &str) {
        let res = reqwest::Client::new()
            .post(format!("{}/gates/{name}", self.origin()))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }

    pub async fn executions(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap()
    }

    /// `http://host:port`, where `/metrics` and `/health` live (beside `/v1`, as on vLLM).
    pub fn origin(&self) -> &str {
        self.base_url.trim_end_matches("/v1")
    }

    /// GPU mode's counters (`--gpu-slots`): running, waiting, peak_running, served, shed...
    pub async fn gpu(&self) -> Value {
        self.stats().await["gpu"].clone()
    }

    /// `GET /metrics` as text (GPU mode: vLLM's gauges and the fake's counters).
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(format!("{}/metrics", self.origin()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET /metrics");
        resp.text().await.unwrap()
    }

    /// The port it listens on: `start(&["--port", …])` starts one there again.
    pub fn port(&self) -> u16 {
        self.base_url
            .trim_end_matches("/v1")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the base URL")
    }

    /// SIGKILL, as a crashed server: open connections are reset, new ones refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a replica process whose worker runs against `upstream`, tuned to react
/// fast in tests, plus `extra` settings.
pub fn engine_env<'a>(
    upstream: &'a FakeUpstream,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OPENBATCH__UPSTREAM__BASE_URL", upstream.base_url.as_str()),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    env
}

/// A server with its batch worker on, pointed at `upstream`, tuned to react fast in tests.
pub async fn spawn_engine(upstream: &FakeUpstream, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let base = upstream.base_url.clone();
    spawn_app_with(move |s| {
        s.worker.enabled = true;
        s.upstream.base_url = base;
        s.worker.poll_interval_ms = 50;
        s.worker.retry_base_ms = 50;
        s.worker.retry_max_ms = 2000;
        tweak(s);
    })
    .await
}
