//! Fair shares of a replica's long-held slots (event streams, uploads being received, results
//! readers), through real HTTP with authentication on and two projects: one project that fills
//! its share leaves the others theirs, each refusal says which limit was reached, a slot comes
//! back when its client leaves or stops reading, and a live read never holds up result writes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::abuse::client_with_key;
use crate::helpers::{
    chat_line, expect_error, project_and_key, spawn_app_with, spawn_engine, to_jsonl, FakeUpstream,
    TestApp,
};
use openbatch::config::Settings;

/// Guards every wait on a condition against a hang; no assertion depends on speed.
const WAIT: Duration = Duration::from_secs(120);

/// A client of `app` acting for a new project `name`, and its key.
async fn tenant(app: &TestApp, name: &str) -> (TestApp, String) {
    let (_, key) = project_and_key(&app.pool, name).await;
    let client = TestApp {
        address: app.address.clone(),
        client: client_with_key(&key),
        pool: app.pool.clone(),
        _db: None,
    };
    (client, key)
}

fn secured(s: &mut Settings) {
    s.auth.enabled = true;
    s.auth.cache_secs = 0;
}

/// Asserts a 429 with `code`, a `Retry-After`, and a message naming `limit`.
async fn assert_refused(res: reqwest::Response, code: &str, limit: &str) {
    assert!(res.headers().contains_key("retry-after"), "{res:?}");
    let err = expect_error(res, 429).await;
    assert_eq!(err["code"], code, "{err}");
    assert_eq!(err["type"], "invalid_request_error", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(limit), "{message} (expected: {limit})");
}

const OWN_SHARE: &str = "This project already has 2 ";
const REPLICA_FULL: &str = "This server already has 3 ";

/// Sends `request` until it is answered `status` (earlier answers are dropped).
async fn until_status(
    mut request: impl FnMut() -> reqwest::RequestBuilder,
    status: u16,
) -> reqwest::Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let res = request().send().await.unwrap();
        if res.status() == status {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "never answered {status}: last {}",
            res.status()
        );
        drop(res);
        // A slot's release is seen only by asking again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_project_fills_its_share_of_event_streams_and_another_still_gets_one() {
    let app = spawn_app_with(|s| {
        secured(s);
        s.limits.max_event_streams = 3;
        s.limits.max_event_streams_per_project = Some(2);
    })
    .await;
    let (a, _) = tenant(&app, "alpha").await;
    let (b, _) = tenant(&app, "beta").await;
    // No worker runs: the batches stay `validating`, and their streams stay open.
    let batch_a = a.submit(
        "/v1/chat/completions",
        to_jsonl(&[chat_line("x", json!({}))]),
    );
    let batch_b = b.submit(
        "/v1/chat/completions",
        to_jsonl(&[chat_line("y", json!({}))]),
    );
    let (batch_a, batch_b) = tokio::join!(batch_a, batch_b);
    let events_a = format!("/v1/batches/{batch_a}/events");
    let events_b = format!("/v1/batches/{batch_b}/events");

    let mut held_a = Vec::new();
    for _ in 0..2 {
        let res = a.get(&events_a).send().await.unwrap();
        assert_eq!(res.status(), 200);
        held_a.push(res);
    }
    let refused = a.get(&events_a).send().await.unwrap();
    assert_refused(refused, "too_many_event_streams", OWN_SHARE).await;

    // Another project still gets a stream; only then is the replica full.
    let held_b = b.get(&events_b).send().await.unwrap();
    assert_eq!(held_b.status(), 200);
    let refused = b.get(&events_b).send().await.unwrap();
    assert_refused(refused, "too_many_event_streams", REPLICA_FULL).await;

    // A stream whose client has gone gives its slot back.
    drop(held_a.pop());
    let again = until_status(|| b.get(&events_b), 200).await;
    drop((again, held_b, held_a));
}

/// Sends an upload's head and the start of its file, then stalls: the upload holds its slot
/// (until `limits.upload_idle_timeout_secs`, set long here) unless it is refused.
async fn stalled_upload(address: &str, key: &str) -> TcpStream {
    let addr = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: openbatch\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The response on `stream` if one comes within a second: (status, head, JSON body).
async fn answer(stream: &mut TcpStream) -> Option<(u16, String, Value)> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let body = serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap();
                return Some((head[9..12].parse().unwrap(), head, body));
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut piece))
            .await
            .ok()?
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&piece[..n]);
    }
}

/// Stalls uploads for `key` one after another until one is refused: the others that are not
/// refused hold the slots the refusal counts. Only stalled uploads of this client take slots
/// meanwhile, so the refusal says what they hold. Returns them and the refusal.
async fn stall_until_refused(address: &str, key: &str) -> (Vec<TcpStream>, String, Value) {
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = stalled_upload(address, key).await;
        match answer(&mut stream).await {
            None => held.push(stream),
            Some((429, head, body)) => return (held, head, body),
            Some(other) => panic!("a stalled upload answered {other:?}"),
        }
    }
    panic!("stalled uploads were never refused")
}

fn assert_raw_refusal(head: &str, body: &Value, limit: &str) {
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(limit), "{message} (expected: {limit})");
}

#[tokio::test]
async fn one_project_fills_its_share_of_upload_slots_and_another_still_uploads() {
    let app = spawn_app_with(|s| {
        secured(s);
        s.limits.max_concurrent_uploads = 3;
        s.limits.max_concurrent_uploads_per_project = Some(2);
        s.limits.upload_idle_timeout_secs = 600;
    })
    .await;
    let (a, key_a) = tenant(&app, "alpha").await;
    let (b, key_b) = tenant(&app, "beta").await;
    let content = to_jsonl(&[chat_line("x", json!({}))]);
    let upload = |who: &TestApp| who.upload("batch", "in.jsonl", content.clone());

    // One project's slow uploads fill its share, and its next upload is refused.
    let (stalled_a, head, body) = stall_until_refused(&app.address, &key_a).await;
    assert_raw_refusal(&head, &body, OWN_SHARE);
    let refused = upload(&a).send().await.unwrap();
    assert_refused(refused, "too_many_uploads", OWN_SHARE).await;

    // The other project still uploads; once it stalls one too, the replica is full.
    assert_eq!(upload(&b).send().await.unwrap().status(), 200);
    let (_stalled_b, head, body) = stall_until_refused(&app.address, &key_b).await;
    assert_raw_refusal(&head, &body, REPLICA_FULL);

    // Uploads whose client has gone give their slots back.
    drop(stalled_a);
    until_status(|| upload(&b), 200).await;
}

/// `GET path` from a client with a tiny receive buffer that reads the response head and then
/// nothing: a large response fills the buffers and its producer waits on the client.
async fn stalled_get(address: &str, path: &str, key: &str) -> (u16, TcpStream) {
    let addr: SocketAddr = address.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    // Set before connecting, so the window never grows past it.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: openbatch\r\nAuthorization: Bearer {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    (status, stream)
}

/// Lines whose results weigh ~12 MB: more than a stalled reader's socket buffers take.
fn heavy_lines() -> Vec<Value> {
    (0..240)
        .map(|i| chat_line(&format!("h{i}"), json!({"fake": {"pad_bytes": 50_000}})))
        .collect()
}

#[tokio::test]
async fn results_readers_get_fair_shares_and_one_that_stops_reading_is_cut_off() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        secured(s);
        s.limits.max_live_readers = 3;
        s.limits.max_live_readers_per_project = Some(2);
        s.limits.live_read_idle_timeout_secs = 10;
    })
    .await;
    let (a, key_a) = tenant(&app, "alpha").await;
    let (b, key_b) = tenant(&app, "beta").await;
    let batch_a = a.submit("/v1/chat/completions", to_jsonl(&heavy_lines()));
    let batch_b = b.submit("/v1/chat/completions", to_jsonl(&heavy_lines()));
    let (batch_a, batch_b) = tokio::join!(batch_a, batch_b);
    a.wait_for(&batch_a, &["completed"]).await;
    b.wait_for(&batch_b, &["completed"]).await;
    let results_a = format!("/v1/batches/{batch_a}/results");
    let results_b = format!("/v1/batches/{batch_b}/results");

    // Two readers of one project that stop reading hold its share (for the idle timeout).
    let (status, mut stalled) = stalled_get(&app.address, &results_a, &key_a).await;
    assert_eq!(status, 200);
    let (status, _stalled_too) = stalled_get(&app.address, &results_a, &key_a).await;
    assert_eq!(status, 200);
    let refused = a.get(&results_a).send().await.unwrap();
    assert_refused(refused, "too_many_results_readers", OWN_SHARE).await;
    let (status, _stalled_b) = stalled_get(&app.address, &results_b, &key_b).await;
    assert_eq!(status, 200, "another project still reads");
    let refused = b.get(&results_b).send().await.unwrap();
    assert_refused(refused, "too_many_results_readers", REPLICA_FULL).await;

    // Once the idle timeout has passed, the stalled readers are cut off and their slots free:
    // the project reads its results in full again.
    let res = until_status(|| a.get(&results_a), 200).await;
    let body = res.bytes().await.unwrap();
    assert_eq!(body.iter().filter(|&&c| c == b'\n').count(), 240);

    // The cut-off response ends in an error (no final chunk), not as if it were whole.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("the cut-off response ends")
        .ok();
    assert!(!rest.ends_with(b"\r\n0\r\n\r\n"), "ended as if complete");
}

#[tokio::test]
async fn a_live_read_never_holds_up_the_batch_s_result_writes() {
    let upstream = FakeUpstream::start(&[]);
    let app = spawn_engine(&upstream, |s| {
        secured(s);
        // The replica's whole share at the upstream: the adaptive limit follows latency, and
        // on a loaded machine it fell to 3 while the gated lines below took every slot, so
        // the last heavy lines waited behind them for good.
        s.upstream.adaptive = false;
    })
    .await;
    let (a, key) = tenant(&app, "alpha").await;
    // The heavy lines answer at once; four more only once the set-up below is done (a fixed
    // latency was once too short for it on a loaded machine).
    let mut lines = heavy_lines();
    lines.extend((0..4).map(|i| chat_line(&format!("s{i}"), json!({"fake": {"gate": "finish"}}))));
    let id = a.submit("/v1/chat/completions", to_jsonl(&lines)).await;
    a.wait_for_progress(&id, |b| {
        b["request_counts"]["completed"].as_i64() >= Some(240)
    })
    .await;
    let path = format!("/v1/batches/{id}/results");

    // A reader that stops reading ~12 MB of live results.
    let (status, _stalled) = stalled_get(&app.address, &path, &key).await;
    assert_eq!(status, 200);
    // A flush held in flight (as one waiting on a lock would be), then a reader that reads.
    // Were the reader to wait for the flush with a lock of its own, every later flush of the
    // batch would queue behind it.
    let mut in_flight = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
        .bind(openbatch::store::results::LIVE_LOCK)
        .bind(&id)
        .execute(&mut *in_flight)
        .await
        .unwrap();
    assert_eq!(
        a.batch(&id).await["status"],
        "in_progress",
        "set up too late"
    );
    let reader = {
        let a = a.get(&path);
        tokio::spawn(async move {
            let res = a.send().await.unwrap();
            assert_eq!(res.status(), 200);
            let mut body = res.bytes_stream();
            while let Some(chunk) = body.next().await {
                chunk.unwrap();
            }
        })
    };

    // The batch's last lines are written and it completes while both readers are open.
    upstream.open_gate("finish").await;
    let done = a.wait_for(&id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 244);
    in_flight.commit().await.unwrap();
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("the reader ends")
        .unwrap();
}
