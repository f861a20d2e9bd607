//! The abuse suite's harness: every attack of issue 9 runs against real replicas (`openbatch
//! serve` processes) inside a [`Stack`], which checks the same things around any attack:
//!
//! * every replica stays ready throughout as the deployment's own readiness probe sees it
//!   (`/readyz` probed every [`PROBE_EVERY`] by a thread of its own, so a busy test cannot hide
//!   a dip; never unready for [`UNREADY_TOLERANCE`] in a row) and is still running at the end;
//! * each replica's memory stays under [`RSS_BOUND_MIB`] (`VmRSS` sampled throughout, and the
//!   kernel's own peak, `VmHWM`, at the end);
//! * another project's ordinary batch completes while the attack runs, every line exactly once
//!   and answered correctly ([`Stack::under_attack`], [`Stack::others_still_served`]);
//! * the attack itself ends within [`ATTACK_BOUND`] (each test asserts its documented error);
//! * nothing is lost: at the end every batch of the other project, and its files, is still
//!   there through every replica ([`Stack::finish`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};

use crate::helpers::{
    assert_all_ready, batch_body, chat_line, engine_env, proc_status_mib, project_and_key,
    start_replica_logging_to, start_replicas_with, to_jsonl, FakeUpstream, Replica, TestApp,
    TestDb,
};

/// Peak RSS allowed per replica through any attack. An idle debug-build replica takes
/// ~25-30 MiB and the worst attacks measured 60-81 MiB (a 96 MB line uploaded, spooled and
/// validated); a replica that held what an attacker sends — a 96 MB line, a 256 MiB part
/// header, 4 MiB responses × lines in flight — would pass it by far.
pub const RSS_BOUND_MIB: u64 = 100;
/// Longest an attack may take to end with its documented error once launched: a guard against
/// hangs and retry loops on a loaded 2-core machine, far above the few seconds the tests'
/// settings give, and far below what the unprotected code took (a batch's 24 h expiry).
pub const ATTACK_BOUND: Duration = Duration::from_secs(150);
/// How often each replica's readiness and memory are sampled.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Longest a replica may answer `/readyz` other than 200 in a row: the readiness probe of
/// `deploy/kubernetes/deployment.yaml` (every 5 s, failure threshold 2) takes a replica out of
/// service only after failures 5 s apart. Shorter dips do happen without any attack: `/readyz`
/// gives PostgreSQL 2 s to answer `SELECT 1`, which a database loaded by the whole suite on two
/// shared cores sometimes misses. A replica whose pool an attack took stays unready far longer.
pub const UNREADY_TOLERANCE: Duration = Duration::from_secs(5);

/// What the replicas' readiness may do during an attack.
#[derive(Clone, Copy)]
pub enum Readiness {
    /// `/readyz` answers 200, but for dips shorter than [`UNREADY_TOLERANCE`].
    Always,
    /// `/readyz` may answer 503 (never fail to answer, which would be a dead replica), for the
    /// stated reason, and is 200 again at the end.
    MayDip(&'static str),
}

/// Several replicas with auth on, their workers on one fake upstream, an attacker's and
/// another project's (the victim's) keys, and a watch on the replicas.
pub struct Stack {
    pub replicas: Vec<Replica>,
    /// A client of each replica with the attacker's key.
    pub attacker: Vec<TestApp>,
    /// A client of each replica with the victim's key.
    pub victim: Vec<TestApp>,
    pub attacker_key: String,
    pub victim_key: String,
    pub attacker_project: String,
    pub victim_project: String,
    pub upstream: FakeUpstream,
    pub url: String,
    readiness: Readiness,
    rss_bound_mib: u64,
    watch: Option<Watch>,
    victim_batches: Mutex<Vec<Value>>,
    rounds: std::sync::atomic::AtomicUsize,
    // Last: the database is dropped after the replicas stop (none: a throwaway cluster's).
    _db: Option<TestDb>,
}

pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn as_project(replicas: &[Replica], url: &str, key: &str) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for r in replicas {
        let mut app = TestApp::connect(&r.address, url).await;
        app.client = client_with_key(key);
        apps.push(app);
    }
    apps
}

impl Stack {
    /// Two replicas on `db` with `extra` settings.
    pub async fn start(db: TestDb, extra: &[(&str, &str)]) -> Self {
        let url = db.url.clone();
        Self::start_each(Some(db), &url, extra, &[&[], &[]]).await
    }

    /// Replica `i` gets `extra` and `each[i]`.
    pub async fn start_each(
        db: Option<TestDb>,
        url: &str,
        extra: &[(&str, &str)],
        each: &[&[(&str, &str)]],
    ) -> Self {
        Self::start_inner(db, url, extra, each, None).await
    }

    /// Two replicas, the first of which also gets `first` and logs (stderr) to `log`.
    pub async fn start_logging(
        db: TestDb,
        extra: &[(&str, &str)],
        first: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        let url = db.url.clone();
        Self::start_inner(Some(db), &url, extra, &[first, &[]], Some(log)).await
    }

    /// Replica `i` gets `extra` and `each[i]`; the first logs (stderr) to `log`, if given.
    pub async fn start_inner(
        db: Option<TestDb>,
        url: &str,
        extra: &[(&str, &str)],
        each: &[&[(&str, &str)]],
        log: Option<&Path>,
    ) -> Self {
        let upstream = FakeUpstream::start(&[]);
        let mut replicas = Vec::new();
        for (i, own) in each.iter().enumerate() {
            let mut settings = vec![
                ("OPENBATCH__AUTH__ENABLED", "true"),
                // Upstream retries as fast as a test wants them.
                ("OPENBATCH__WORKER__RETRY_BASE_MS", "50"),
                ("OPENBATCH__WORKER__RETRY_MAX_MS", "2000"),
            ];
            settings.extend_from_slice(extra);
            settings.extend_from_slice(own);
            let env = engine_env(&upstream, &settings);
            match log {
                Some(log) if i == 0 => {
                    replicas.push(start_replica_logging_to(url, &env, log).await);
                }
                _ => replicas.extend(start_replicas_with(1, url, &env).await),
            }
        }
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let (attacker_project, attacker_key) = project_and_key(&pool, "attacker").await;
        let (victim_project, victim_key) = project_and_key(&pool, "victim").await;
        pool.close().await;
        let watch = Watch::start(&replicas);
        Self {
            attacker: as_project(&replicas, url, &attacker_key).await,
            victim: as_project(&replicas, url, &victim_key).await,
            replicas,
            attacker_key,
            victim_key,
            attacker_project,
            victim_project,
            upstream,
            url: url.to_owned(),
            readiness: Readiness::Always,
            rss_bound_mib: RSS_BOUND_MIB,
            watch: Some(watch),
            victim_batches: Mutex::new(Vec::new()),
            rounds: Default::default(),
            _db: db,
        }
    }

    /// Lets readiness dip during this attack, for `reason`.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// A bound other than [`RSS_BOUND_MIB`], for an attack whose honest cost is higher (the
    /// caller says why).
    pub fn rss_bound_mib(mut self, mib: u64) -> Self {
        self.rss_bound_mib = mib;
        self
    }

    /// `host:port` of replica `i`, for raw connections.
    pub fn addr(&self, i: usize) -> String {
        self.replicas[i]
            .address
            .trim_start_matches("http://")
            .to_owned()
    }

    /// A database connection pool (any client's).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.victim[0].pool
    }

    /// Runs `attack` while the victim runs ordinary batches, one after another on alternating
    /// replicas, until the attack has ended and at least one batch completed. The attack must
    /// end within [`ATTACK_BOUND`]; its output is returned.
    pub async fn under_attack<T>(&self, attack: impl Future<Output = T>) -> T {
        let over = AtomicBool::new(false);
        let attack = async {
            let started = Instant::now();
            let out = tokio::time::timeout(ATTACK_BOUND, attack)
                .await
                .unwrap_or_else(|_| panic!("the attack did not end within {ATTACK_BOUND:?}"));
            eprintln!("attack ended after {:?}", started.elapsed());
            over.store(true, Ordering::SeqCst);
            out
        };
        let victim = async {
            let n = self.replicas.len();
            let mut i = 0;
            loop {
                self.others_still_served(i % n, (i + 1) % n).await;
                i += 1;
                if over.load(Ordering::SeqCst) {
                    break;
                }
            }
        };
        tokio::join!(attack, victim).0
    }

    /// Another project's ordinary batch, uploaded through replica `upload_via` and created and
    /// followed through `via`, completes with each of its lines exactly once and answered
    /// correctly. What an SDK retries (408, 429, 503) is retried. Returns the batch, which
    /// [`Stack::finish`] checks again.
    pub async fn others_still_served(&self, upload_via: usize, via: usize) -> Value {
        const LINES: usize = 5;
        let round = self.rounds.fetch_add(1, Ordering::SeqCst);
        let ids: Vec<String> = (0..LINES).map(|i| format!("v{round}-{i}")).collect();
        let lines: Vec<Value> = ids.iter().map(|id| chat_line(id, json!({}))).collect();
        let content = to_jsonl(&lines);
        let up = &self.victim[upload_via];
        let file: Value = with_retries(|| {
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(content.clone()).file_name("victim.jsonl"),
                );
            up.post("/v1/files").multipart(form)
        })
        .await
        .json()
        .await
        .unwrap();
        let file_id = file["id"]
            .as_str()
            .unwrap_or_else(|| panic!("victim's upload stored: {file}"))
            .to_owned();
        let app = &self.victim[via];
        let batch: Value = with_retries(|| app.post("/v1/batches").json(&batch_body(&file_id)))
            .await
            .json()
            .await
            .unwrap();
        let id = batch["id"]
            .as_str()
            .unwrap_or_else(|| panic!("victim's batch created: {batch}"));
        let done = app.wait_for(id, &["completed", "failed", "expired"]).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["request_counts"],
            json!({"total": LINES, "completed": LINES, "failed": 0}),
            "{done}"
        );
        assert!(done["error_file_id"].is_null(), "{done}");
        let out = done["output_file_id"].as_str().unwrap();
        let text = with_retries(|| app.get(&format!("/v1/files/{out}/content")))
            .await
            .text()
            .await
            .unwrap();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let cid = v["custom_id"].as_str().unwrap().to_owned();
            assert_eq!(v["response"]["status_code"], 200, "{v}");
            assert_eq!(
                v["response"]["body"]["choices"][0]["message"]["content"],
                format!("echo: hello {cid}"),
                "{v}"
            );
            *seen.entry(cid).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = ids.into_iter().map(|id| (id, 1)).collect();
        assert_eq!(seen, expected, "each of the victim's lines exactly once");
        self.victim_batches.lock().unwrap().push(done.clone());
        done
    }

    /// The end of every attack test: nothing of the victim's is lost (every batch it ran is
    /// still completed, its files there, through every replica), every replica is still
    /// running and ready, readiness held throughout as [`Readiness`] allows, and memory
    /// stayed under the bound.
    pub async fn finish(mut self) {
        let batches = self.victim_batches.lock().unwrap().clone();
        assert!(!batches.is_empty(), "the victim ran no batch");
        for app in &self.victim {
            for b in &batches {
                let id = b["id"].as_str().unwrap();
                // Retried: an attack on the rate limit may leave the victim's key a short wait.
                let now: Value = with_retries(|| app.get(&format!("/v1/batches/{id}")))
                    .await
                    .json()
                    .await
                    .unwrap();
                assert_eq!(now["status"], "completed", "{now}");
                assert_eq!(now["request_counts"], b["request_counts"], "{now}");
                for f in ["input_file_id", "output_file_id"] {
                    let fid = b[f].as_str().unwrap();
                    let res = with_retries(|| app.get(&format!("/v1/files/{fid}"))).await;
                    assert_eq!(res.status(), 200, "{f} {fid} lost");
                }
            }
        }
        assert_all_ready(&self.replicas).await;
        let report = self.watch.take().unwrap().stop();
        for r in &mut self.replicas {
            assert!(r.is_running(), "replica {} died", r.address);
        }
        for (i, r) in self.replicas.iter().enumerate() {
            let peak = r.peak_rss_mib().max(report.sampled_peak_mib[i]);
            eprintln!(
                "replica {} peak RSS {peak} MiB ({} probes, bound {} MiB)",
                r.address, report.probes, self.rss_bound_mib
            );
            assert!(
                peak < self.rss_bound_mib,
                "replica {} peaked at {peak} MiB (bound {} MiB)",
                r.address,
                self.rss_bound_mib
            );
        }
        assert!(report.probes > 0, "readiness was never probed");
        match self.readiness {
            Readiness::Always => {
                eprintln!(
                    "{} of {} probes not ready, longest run {:?}",
                    report.not_ready.len(),
                    report.probes,
                    report.longest_unready
                );
                assert!(
                    report.longest_unready < UNREADY_TOLERANCE,
                    "a replica was unready for {:?} in a row (tolerance {UNREADY_TOLERANCE:?}): {:?}",
                    report.longest_unready,
                    report.not_ready
                );
            }
            Readiness::MayDip(reason) => {
                eprintln!(
                    "{} of {} probes not ready ({reason})",
                    report.not_ready.len(),
                    report.probes
                );
                assert!(
                    report.not_ready.iter().all(|p| p.contains(" 503")),
                    "only 503 may answer ({reason}), never silence: {:?}",
                    report.not_ready
                );
            }
        }
    }
}

/// Retries what an SDK retries (429, 503, 408) until the deadline.
pub async fn with_retries(send: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let res = send().send().await;
        match res {
            Ok(r) if ![408, 429, 503].contains(&r.status().as_u16()) => return r,
            other => assert!(
                Instant::now() < deadline,
                "still refused at the deadline: {other:?}"
            ),
        }
        // Backoff between retries, as an SDK's.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Probes every replica's `/readyz` and samples its `VmRSS` on a thread (and runtime) of its
/// own, so that a test busy building a 96 MB line still gets its replicas watched.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<WatchReport>>,
}

struct WatchReport {
    /// Rounds of probes (one per replica each).
    probes: usize,
    /// Each probe that did not answer 200: `address status-or-error`.
    not_ready: Vec<String>,
    /// Largest `VmRSS` sampled per replica, in MiB.
    sampled_peak_mib: Vec<u64>,
    /// Longest time any replica was unready in a row: from its first failed probe to the
    /// start of its next successful one (or the end of the watch).
    longest_unready: Duration,
}

impl Watch {
    fn start(replicas: &[Replica]) -> Self {
        let targets: Vec<(String, u32)> = replicas
            .iter()
            .map(|r| (r.address.clone(), r.pid()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Generous: a probe slowed down by the loaded machine is not a dip; one that
                // gets no answer in this long is.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut report = WatchReport {
                    probes: 0,
                    not_ready: Vec::new(),
                    sampled_peak_mib: vec![0; targets.len()],
                    longest_unready: Duration::ZERO,
                };
                let mut unready_since: Vec<Option<Instant>> = vec![None; targets.len()];
                loop {
                    let last = stopped.load(Ordering::SeqCst);
                    for (i, (address, pid)) in targets.iter().enumerate() {
                        let probed_at = Instant::now();
                        let res = client.get(format!("{address}/readyz")).send().await;
                        let failure = match res {
                            Ok(r) if r.status() == 200 => None,
                            Ok(r) => Some(format!("{address} {}", r.status())),
                            Err(e) => Some(format!("{address} error {e}")),
                        };
                        match failure {
                            Some(f) => {
                                report.not_ready.push(f);
                                unready_since[i].get_or_insert(probed_at);
                            }
                            None => {
                                if let Some(since) = unready_since[i].take() {
                                    report.longest_unready =
                                        report.longest_unready.max(probed_at - since);
                                }
                            }
                        }
                        if let Some(rss) = proc_status_mib(*pid, "VmRSS") {
                            report.sampled_peak_mib[i] = report.sampled_peak_mib[i].max(rss);
                        }
                    }
                    report.probes += 1;
                    if last {
                        for since in unready_since.into_iter().flatten() {
                            report.longest_unready = report.longest_unready.max(since.elapsed());
                        }
                        return report;
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            })
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> WatchReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the watch thread")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
