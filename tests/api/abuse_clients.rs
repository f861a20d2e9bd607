//! Exhaustion by slow or oversized clients, each attack run against real replicas in the abuse
//! harness ([`Stack`]): the service stays ready, another project's ordinary batch still
//! completes meanwhile, replica memory stays bounded, and the attack ends with its documented
//! error within a bounded time, with nothing lost.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::abuse::{Readiness, Stack};
use crate::cluster::Cluster;
use crate::helpers::{
    batch_body, chat_line, expect_error, spawn_app_with, to_jsonl, Expect, TestDb,
};

/// Longest an attack may take to be answered once it has done its worst: a guard against
/// hangs on a loaded machine, far above the few seconds the settings below give.
const ANSWER_BOUND: Duration = Duration::from_secs(60);

/// A raw HTTP/1.1 response: status, lower-cased head and JSON body (read by Content-Length,
/// not to EOF, since the connection may stay open).
async fn read_response<R: AsyncRead + Unpin>(stream: &mut R) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut piece).await.expect("read the response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + length {
        let n = stream.read(&mut piece).await.expect("read the body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&piece[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    (status, head, body)
}

/// The head of an upload, as a client of a loopback server sends it (with auth off, another
/// `Host` is refused before the body is read).
fn request_head(key: &str, content_length: Option<u64>) -> Vec<u8> {
    let length = content_length.map_or("Transfer-Encoding: chunked\r\n".to_owned(), |n| {
        format!("Content-Length: {n}\r\n")
    });
    format!(
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\n{length}\r\n"
    )
    .into_bytes()
}

const FILE_PART_HEAD: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n\
     batch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\
     Content-Type: application/octet-stream\r\n\r\n";

/// Twenty clients dripping an upload a byte at a time into one replica with a pool of ten
/// connections: ten are received (the per-replica bound), ten are told 429 at once, none of
/// them holds a database connection, and each of the ten received gets 408 once it stalls.
#[tokio::test]
async fn slow_uploads_hold_no_database_connection_and_end_in_408() {
    let db = TestDb::new();
    let stack = Stack::start(
        db,
        &[
            // As many connections as upload slots: uploads that held a connection each would
            // leave the replica none.
            ("OPENBATCH__DATABASE__MAX_CONNECTIONS", "10"),
            ("OPENBATCH__DATABASE__ACQUIRE_TIMEOUT_SECS", "5"),
            ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS", "10"),
            // One project may fill the replica here: what is tested is the replica's bound.
            (
                "OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS_PER_PROJECT",
                "10",
            ),
            ("OPENBATCH__LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "3"),
            ("OPENBATCH__LIMITS__UPLOAD_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    const CLIENTS: usize = 20;
    const HELD: usize = 10;
    let stop_dripping = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let one_answered = Arc::new(Notify::new());
    let mut drippers = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, key) = (stack.addr(0), stack.attacker_key.clone());
        let (stop, answered) = (stop_dripping.clone(), answered.clone());
        let one_answered = one_answered.clone();
        drippers.push(tokio::spawn(async move {
            let (mut rd, mut wr) = TcpStream::connect(&addr).await.unwrap().into_split();
            wr.write_all(&request_head(&key, Some(1_000_000)))
                .await
                .unwrap();
            wr.write_all(FILE_PART_HEAD.as_bytes()).await.unwrap();
            // Drip until told to stop, then stall with the connection open.
            let drip = tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if wr.write_all(b"{").await.is_err() {
                        return;
                    }
                    // The attack itself: one byte every 250 ms, never idle long enough.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(wr);
            });
            let answer = tokio::time::timeout(Duration::from_secs(600), read_response(&mut rd))
                .await
                .expect("every dripper is answered");
            let answered_at = Instant::now();
            answered.fetch_add(1, Ordering::SeqCst);
            one_answered.notify_one();
            drip.abort();
            (answer, answered_at)
        }));
    }
    let deadline = tokio::time::Instant::now() + ANSWER_BOUND;
    while answered.load(Ordering::SeqCst) < CLIENTS - HELD {
        tokio::time::timeout_at(deadline, one_answered.notified())
            .await
            .expect("the excess uploads were not refused");
    }

    // Meanwhile: replica 0 takes no further upload, but its database pool is free, so it is
    // ready and serves batches; the other replica takes uploads.
    let full = stack.victim[0]
        .upload("batch", "v.jsonl", to_jsonl(&[chat_line("x", json!({}))]))
        .send()
        .await
        .unwrap();
    assert_eq!(full.headers()["retry-after"], "1");
    let err = expect_error(full, 429).await;
    assert_eq!(err["code"], "too_many_uploads");
    stack.others_still_served(1, 0).await;

    stop_dripping.store(true, Ordering::SeqCst);
    let stalled_at = Instant::now();
    let (mut timed_out, mut refused) = (0, 0);
    for d in drippers {
        let ((status, head, body), answered_at) = d.await.unwrap();
        match status {
            429 => {
                refused += 1;
                assert!(head.contains("retry-after: 1"), "{head}");
                assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");
            }
            408 => {
                timed_out += 1;
                assert_eq!(body["error"]["code"], "request_timeout", "{body}");
                assert_eq!(body["error"]["type"], "invalid_request_error");
                assert!(
                    answered_at.saturating_duration_since(stalled_at) < ANSWER_BOUND,
                    "a stalled upload was answered only after {:?}",
                    answered_at - stalled_at
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((timed_out, refused), (HELD, CLIENTS - HELD));

    // The slots are free again, and nothing the attack sent was stored.
    stack.others_still_served(0, 0).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM files WHERE project_id = $1")
        .bind(&stack.attacker_project)
        .fetch_one(&stack.victim[0].pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    stack.finish().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `head` and then `body` on a fresh connection (ignoring a write the server cut short
/// by answering early) and returns the answer and how long it took.
async fn raw_request(addr: &str, head: Vec<u8>, body: Vec<u8>) -> ((u16, String, Value), Duration) {
    let started = Instant::now();
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
        // Keep the write side open: the answer must not depend on the client finishing.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(wr);
    });
    let answer = tokio::time::timeout(ANSWER_BOUND, read_response(&mut rd))
        .await
        .expect("answered within the bound");
    writer.abort();
    (answer, started.elapsed())
}

fn part(name: &str, content: &[u8]) -> Vec<u8> {
    [
        format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
        content,
        b"\r\n",
    ]
    .concat()
}

/// Multipart requests built to make a replica read or buffer without limit: each is refused
/// with its documented error, having read no more than the limits allow.
#[tokio::test]
async fn oversized_multipart_requests_are_refused_with_bounded_reads() {
    const MAX_UPLOAD: u64 = 1024 * 1024;
    let db = TestDb::new();
    let max = MAX_UPLOAD.to_string();
    let stack = Stack::start(db, &[("OPENBATCH__LIMITS__MAX_UPLOAD_BYTES", &max)]).await;
    let key = stack.attacker_key.clone();
    let end = b"--XyZ--\r\n".to_vec();
    let file_part = |content: &[u8]| {
        [
            FILE_PART_HEAD
                .replace(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n",
                    "",
                )
                .as_bytes(),
            content,
            b"\r\n",
        ]
        .concat()
    };
    let line = to_jsonl(&[chat_line("a", json!({}))]);
    let attacks: Vec<Attack> = vec![
        (
            "Content-Length of 100 GB",
            request_head(&key, Some(100_000_000_000)),
            Vec::new(),
            413,
            "file_too_large",
        ),
        (
            "5,000 tiny parts",
            request_head(&key, None),
            chunked(&[(0..5000).flat_map(|i| part(&format!("p{i}"), b"x")).collect(), end.clone()].concat()),
            400,
            "too_many_parts",
        ),
        (
            "a 4 MiB preamble with no line break",
            request_head(&key, None),
            chunked(&[vec![b'a'; 4 << 20], part("purpose", b"batch"), end.clone()].concat()),
            413,
            "form_too_large",
        ),
        (
            "a 4 MiB part header",
            request_head(&key, None),
            chunked(
                &[
                    format!("--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\nX-Pad: {}\r\n\r\nbatch\r\n", "p".repeat(4 << 20)).into_bytes(),
                    end.clone(),
                ]
                .concat(),
            ),
            413,
            "form_too_large",
        ),
        (
            "a 4 MiB ignored part beside a small file",
            request_head(&key, None),
            chunked(&[part("purpose", b"batch"), part("junk", &vec![b'j'; 4 << 20]), file_part(&line), end.clone()].concat()),
            413,
            "form_too_large",
        ),
        (
            "a file over the limit, with no Content-Length",
            request_head(&key, None),
            chunked(&[part("purpose", b"batch"), file_part(&vec![b'{'; (MAX_UPLOAD + 1) as usize]), end.clone()].concat()),
            413,
            "file_too_large",
        ),
    ];
    let attack = async {
        let runs = attacks
            .iter()
            .enumerate()
            .map(|(i, (what, head, body, status, code))| {
                let addr = stack.addr(i % 2);
                async move {
                    let ((got, _, err), took) =
                        raw_request(&addr, head.clone(), body.clone()).await;
                    assert_eq!(got, *status, "{what}: {err}");
                    assert_eq!(err["error"]["code"], *code, "{what}: {err}");
                    assert!(took < ANSWER_BOUND, "{what} took {took:?}");
                }
            });
        futures_util::future::join_all(runs).await;
    };
    // One part header streamed without end: a parser that buffered it would hold 256 MiB.
    let endless_header = async {
        let started = Instant::now();
        let (mut rd, mut wr) = TcpStream::connect(stack.addr(0))
            .await
            .unwrap()
            .into_split();
        let head = request_head(&key, None);
        let writer = tokio::spawn(async move {
            let start = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\nX-Pad: ";
            if wr.write_all(&head).await.is_err()
                || wr.write_all(&chunked_piece(start)).await.is_err()
            {
                return;
            }
            let piece = chunked_piece(&[b'p'; 64 * 1024]);
            for _ in 0..(256 * 16) {
                if wr.write_all(&piece).await.is_err() {
                    return;
                }
            }
        });
        let (status, _, err) = tokio::time::timeout(ANSWER_BOUND, read_response(&mut rd))
            .await
            .expect("answered within the bound");
        writer.abort();
        assert_eq!(status, 413, "endless header: {err}");
        assert_eq!(err["error"]["code"], "form_too_large", "{err}");
        assert!(started.elapsed() < ANSWER_BOUND);
    };
    tokio::join!(attack, endless_header, stack.others_still_served(0, 1));
    // An ordinary upload of the same project still works: nothing was left half-done.
    stack.attacker[0]
        .upload("batch", "ok.jsonl", line.clone())
        .expect_response(200)
        .await;
    stack.finish().await;
}

/// What is sent, the head, the body, and the status and code it must get.
type Attack = (&'static str, Vec<u8>, Vec<u8>, u16, &'static str);

/// One chunk of HTTP/1.1 chunked encoding.
fn chunked_piece(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}

/// A body in HTTP/1.1 chunked encoding, in 64 KiB chunks.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for c in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Real PostgreSQL failures a retry clears answer 503 with `Retry-After` (which the SDKs
/// retry), never 500: each SQLSTATE raised by PostgreSQL itself under a real request, then
/// every connection of the replicas terminated again and again under a running batch.
#[tokio::test]
async fn database_hiccups_answer_503_and_lose_nothing() {
    let db = TestDb::new();
    let url = db.url.clone();
    let stack = Stack::start(db, &[("OPENBATCH__DATABASE__ACQUIRE_TIMEOUT_SECS", "5")])
        .await
        // Every connection of the replicas is terminated again and again: a probe that meets
        // a dead pooled connection answers 503 once, as a probe's failure threshold allows.
        .readiness(Readiness::MayDip(
            "connections terminated under the replicas",
        ));
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let app = &stack.attacker[0];
    for code in [
        "40001", "40P01", "57P01", "57014", "55P03", "08006", "53300",
    ] {
        let install = format!(
            "CREATE FUNCTION hiccup() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$;
             CREATE TRIGGER hiccup BEFORE INSERT ON batches FOR EACH ROW EXECUTE FUNCTION hiccup();"
        );
        sqlx::raw_sql(&install).execute(&mut admin).await.unwrap();
        let res = app
            .create_batch(&batch_body("file-x"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("1"),
            "{code}"
        );
        let err = expect_error(res, 503).await;
        assert_eq!(err["type"], "server_error", "{code}");
        sqlx::raw_sql("DROP TRIGGER hiccup ON batches; DROP FUNCTION hiccup();")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    app.create_batch(&batch_body("file-x"))
        .expect_response(200)
        .await;

    // Connections killed under the replicas while another project's batch runs.
    let kill = async {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let warm = app.get("/v1/files").send().await.unwrap().status().as_u16();
            statuses.push(warm);
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            for app in &stack.attacker {
                let res = app.get("/v1/files").send().await.unwrap();
                let status = res.status().as_u16();
                if status == 503 {
                    assert_eq!(res.headers()["retry-after"], "1");
                    expect_error(res, 503).await;
                }
                statuses.push(status);
            }
            // Part of the attack: a kill every 300 ms.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        statuses
    };
    let (statuses, _) = tokio::join!(kill, stack.others_still_served(0, 1));
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "only 200 or 503: {statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "no request met a killed connection: {statuses:?}"
    );
    stack.others_still_served(1, 0).await;
    stack.finish().await;
}

/// `/metrics` on its own address, not on the API port; a flood of scrapes runs no database
/// query (the gauges come from one background task per replica), counted by PostgreSQL
/// itself (pg_stat_statements in a throwaway cluster).
#[tokio::test]
async fn metrics_scrapes_cost_no_query_and_stay_off_the_api_port() {
    const SCRAPES: usize = 400;
    let cluster = Cluster::start();
    let mut conn = PgConnection::connect(&cluster.url()).await.unwrap();
    sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    cluster.stop();
    cluster.start_again();
    let url = format!("{}/ob_metrics", cluster.url().rsplit_once('/').unwrap().0);
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let (a0, a1) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let stack = Stack::start_each(
        None,
        &url,
        &[("OPENBATCH__SERVER__METRICS_REFRESH_SECS", "1")],
        &[
            &[("OPENBATCH__SERVER__METRICS_ADDRESS", &a0)],
            &[("OPENBATCH__SERVER__METRICS_ADDRESS", &a1)],
        ],
    )
    .await;
    let mut admin = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut admin)
        .await
        .unwrap();

    for (r, port) in stack.replicas.iter().zip(&ports) {
        let public = reqwest::get(format!("{}/metrics", r.address))
            .await
            .unwrap();
        assert_eq!(public.status(), 404, "/metrics still on the API port");
        let private = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(private.status(), 200);
        assert!(private
            .text()
            .await
            .unwrap()
            .contains("openbatch_batches{status=\"validating\"}"));
    }
    let counting_queries = || async {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT sum(calls)::int8 FROM pg_stat_statements
             WHERE query LIKE '%FROM batches%GROUP BY status%'",
        )
        .fetch_one(&mut PgConnection::connect(&url).await.unwrap())
        .await
        .unwrap();
        n.unwrap_or(0)
    };
    let before = counting_queries().await;
    // The refresh task's own queries are visible, so the count below can see scrapes' too.
    assert!(before >= 1, "no counting query recorded yet");
    let started = Instant::now();
    let flood = async {
        let client = reqwest::Client::new();
        let scrapes = (0..SCRAPES).map(|i| {
            let url = format!("http://127.0.0.1:{}/metrics", ports[i % 2]);
            let client = client.clone();
            async move { client.get(url).send().await.unwrap().status() }
        });
        let statuses = futures_util::future::join_all(scrapes).await;
        assert!(statuses.iter().all(|s| s.is_success()));
    };
    tokio::join!(flood, stack.others_still_served(0, 1));
    let ran = counting_queries().await - before;
    // Only the refresh task's own queries: one per replica per second (plus one each).
    let allowed = 2 * (started.elapsed().as_secs() as i64 + 2);
    assert!(
        ran <= allowed,
        "{ran} counting queries for {SCRAPES} scrapes (refresh task alone: <= {allowed})"
    );
    stack.finish().await;
}

/// The storage quota holds across replicas: ten uploads racing on two replicas store no more
/// than the quota allows, the rest get 403 `storage_quota_exceeded`, and deleting a file
/// makes room again. Another project is unaffected.
#[tokio::test]
async fn the_storage_quota_holds_under_racing_uploads_on_two_replicas() {
    const QUOTA: u64 = 1_000_000;
    const FILE: usize = 150_000;
    let db = TestDb::new();
    let quota = QUOTA.to_string();
    let stack = Stack::start(
        db,
        &[
            ("OPENBATCH__LIMITS__MAX_STORED_BYTES_PER_PROJECT", &quota),
            // Five uploads of one project race on each replica: all are received at once.
            ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS_PER_PROJECT", "8"),
        ],
    )
    .await;
    let content = |i: usize| {
        let mut c = format!("{{\"n\": {i}}}\n").into_bytes();
        c.resize(FILE - 1, b' ');
        c.push(b'\n');
        c
    };
    let race = async {
        let uploads = (0..10).map(|i| {
            let app = &stack.attacker[i % 2];
            let body = content(i);
            async move { app.upload("user_data", "q.txt", body).send().await.unwrap() }
        });
        futures_util::future::join_all(uploads).await
    };
    let (answers, _) = tokio::join!(race, stack.others_still_served(0, 1));
    let mut stored = Vec::new();
    for res in answers {
        if res.status() == 200 {
            stored.push(
                res.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        } else {
            assert_eq!(res.headers()["x-should-retry"], "false");
            let err = expect_error(res, 403).await;
            assert_eq!(err["code"], "storage_quota_exceeded");
            assert_eq!(err["param"], "file");
        }
    }
    let fits = QUOTA as usize / FILE;
    assert_eq!(stored.len(), fits, "exactly as many as fit: {stored:?}");
    let counted: i64 =
        sqlx::query_scalar("SELECT stored_bytes FROM project_storage WHERE project_id = $1")
            .bind(&stack.attacker_project)
            .fetch_one(&stack.attacker[0].pool)
            .await
            .unwrap();
    assert_eq!(counted as usize, fits * FILE);

    // Full: one more is refused at once; after a deletion it fits.
    stack.attacker[1]
        .upload("user_data", "q.txt", content(99))
        .expect_error(403)
        .await;
    stack.attacker[0]
        .client
        .delete(stack.attacker[0].url(&format!("/v1/files/{}", stored[0])))
        .expect_response(200)
        .await;
    stack.attacker[1]
        .upload("user_data", "q.txt", content(100))
        .expect_response(200)
        .await;
    // The count follows every way files come and go (uploads, batch output, deletion).
    for project in [&stack.attacker_project, &stack.victim_project] {
        let (counted, actual): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT stored_bytes FROM project_storage WHERE project_id = $1),
                    (SELECT sum(bytes)::int8 FROM files
                     WHERE project_id = $1 AND deleted_at IS NULL AND NOT purged)",
        )
        .bind(project)
        .fetch_one(&stack.attacker[0].pool)
        .await
        .unwrap();
        assert_eq!(counted, actual, "{project}");
    }
    stack.finish().await;
}

/// A metrics address that cannot be bound stops the process at start, naming the setting.
#[tokio::test]
async fn a_metrics_address_in_use_fails_fast_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = crate::helpers::settings_for("postgres://postgres@127.0.0.1:1/none");
    settings.server.metrics_address = Some(taken.local_addr().unwrap().to_string());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(settings.database.url.expose_secret())
        .unwrap();
    let err = match openbatch::startup::Application::build_with_pool(&settings, pool) {
        Ok(_) => panic!("started with its metrics address in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("OPENBATCH__SERVER__METRICS_ADDRESS"), "{err}");
}

/// An upload dripped just fast enough never to be idle is still cut off at
/// `limits.upload_timeout_secs`; an unwritable spool directory is a retryable 503.
#[tokio::test]
async fn an_upload_past_its_total_time_is_408_and_an_unwritable_spool_is_503() {
    let app = spawn_app_with(|s| {
        s.limits.upload_timeout_secs = 2;
        s.limits.upload_idle_timeout_secs = 30;
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let (mut rd, mut wr) = TcpStream::connect(&addr).await.unwrap().into_split();
    wr.write_all(&request_head("unused", Some(1_000_000)))
        .await
        .unwrap();
    wr.write_all(FILE_PART_HEAD.as_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        while wr.write_all(b"{").await.is_ok() {
            // The drip under test: one byte every 200 ms, never idle.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (status, _, body) = tokio::time::timeout(ANSWER_BOUND, read_response(&mut rd))
        .await
        .expect("answered within the bound");
    drip.abort();
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than the 2 seconds"),
        "{body}"
    );

    let app = spawn_app_with(|s| {
        s.limits.upload_spool_dir = Some("/nonexistent/openbatch-spool".to_owned());
    })
    .await;
    let res = app
        .upload("batch", "a.jsonl", to_jsonl(&[chat_line("a", json!({}))]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    expect_error(res, 503).await;
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM files")
            .fetch_one(&app.pool)
            .await
            .unwrap(),
        0
    );
}
