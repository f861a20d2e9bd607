//! The pool alone: shares, choice, ejection and probes, waits, pauses, the adaptive limit.
use super::*;

fn pool(urls: &[&str], cap: usize, replicas: usize) -> Arc<Pool> {
    Pool::new(
        "u",
        urls,
        cap,
        false,
        Arc::new(AtomicUsize::new(replicas)),
        RetryPolicy::fixed(5, Duration::from_millis(100), Duration::from_secs(2)),
        reqwest::Client::new(),
    )
}

/// An adaptive pool whose pauses are short (a millisecond or two).
fn adaptive_pool(urls: &[&str], cap: usize, replicas: usize) -> Arc<Pool> {
    Pool::new(
        "u",
        urls,
        cap,
        true,
        Arc::new(AtomicUsize::new(replicas)),
        RetryPolicy::fixed(5, Duration::from_millis(1), Duration::from_millis(2)),
        reqwest::Client::new(),
    )
}

/// What adaptive concurrency adds to a request's way through the pool (take a slot, give
/// it back with an answer): run in release, `cargo test --release --lib lease_cost --
/// --ignored --nocapture`. The fleet benchmark's `cpu` scenario measures whole replicas.
#[test]
#[ignore = "a measurement: run it in release"]
fn lease_cost_with_and_without_adaptive() {
    for adaptive in [false, true] {
        let urls = ["http://a/v1", "http://b/v1"];
        let p = if adaptive {
            adaptive_pool(&urls, 64, 3)
        } else {
            pool(&urls, 64, 3)
        };
        let n = 1_000_000u32;
        let started = Instant::now();
        for _ in 0..n {
            let Ok(lease) = p.pick() else {
                panic!("no free slot")
            };
            lease.finish(Verdict::Answered);
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(n);
        println!("adaptive {adaptive}: {per:.0} ns per request through the pool");
    }
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[test]
fn the_share_splits_the_cap_and_never_reaches_zero() {
    assert_eq!(share(6, 1), 6);
    assert_eq!(share(6, 3), 2);
    assert_eq!(share(6, 4), 1);
    assert_eq!(share(6, 10), 1);
    assert_eq!(share(40, 3), 13);
    assert_eq!(share(40, 6), 6);
    assert_eq!(share(5, 0), 5);
    assert_eq!(share(40, crate::cluster::JOINING), 0);
}

#[tokio::test]
async fn lines_go_to_the_least_loaded_endpoint_within_the_share() {
    let p = pool(&["http://a/v1", "http://b/v1"], 4, 2);
    let mut stop = never();
    let mut leases = Vec::new();
    for _ in 0..4 {
        leases.push(p.acquire(&mut stop).await.unwrap());
    }
    let on = |i: usize, l: &[Lease<'_>]| l.iter().filter(|x| x.idx == i).count();
    assert_eq!((on(0, &leases), on(1, &leases)), (2, 2));
    // Both are at their share (4 / 2 replicas): a fifth waits until a slot frees.
    assert!(p.pick().is_err());
    let freed = leases.iter().position(|l| l.idx == 1).unwrap();
    leases.remove(freed);
    let next = p.acquire(&mut stop).await.unwrap();
    assert_eq!(next.idx, 1);
}

#[tokio::test]
async fn the_share_follows_the_live_replicas() {
    let p = pool(&["http://a/v1"], 6, 3);
    let mut stop = never();
    let a = p.acquire(&mut stop).await.unwrap();
    let b = p.acquire(&mut stop).await.unwrap();
    assert!(p.pick().is_err());
    p.replicas.store(1, Ordering::Relaxed);
    let c = p.pick().ok().unwrap();
    drop((a, b, c));
}

#[tokio::test]
async fn a_refused_endpoint_is_taken_out_and_others_get_the_lines() {
    let p = pool(&["http://127.0.0.1:1/v1", "http://b/v1"], 10, 1);
    let mut stop = never();
    let first = p.acquire(&mut stop).await.unwrap();
    assert_eq!(first.idx, 0);
    first.finish(Verdict::Refused);
    for _ in 0..5 {
        let l = p.acquire(&mut stop).await.unwrap();
        assert_eq!(l.idx, 1);
    }
    let order: Vec<&str> = p.by_health().iter().map(|e| e.base_url.as_str()).collect();
    assert_eq!(order, ["http://b/v1", "http://127.0.0.1:1/v1"]);
}

#[tokio::test]
async fn drops_take_an_endpoint_out_only_in_a_row() {
    let p = pool(&["http://a/v1"], 10, 1);
    let mut stop = never();
    for _ in 0..EJECT_AFTER - 1 {
        p.acquire(&mut stop).await.unwrap().finish(Verdict::Dropped);
    }
    p.acquire(&mut stop)
        .await
        .unwrap()
        .finish(Verdict::Answered);
    for _ in 0..EJECT_AFTER - 1 {
        p.acquire(&mut stop)
            .await
            .unwrap()
            .finish(Verdict::TimedOut);
    }
    assert!(p.pick().is_ok());
    p.acquire(&mut stop).await.unwrap().finish(Verdict::Dropped);
    assert!(p.pick().is_err(), "taken out after {EJECT_AFTER} in a row");
}

#[tokio::test]
async fn a_waiting_line_ends_when_its_batch_stops() {
    let p = pool(&["http://a/v1"], 1, 1);
    let mut stop = never();
    let _held = p.acquire(&mut stop).await.unwrap();
    let mut stopped = Box::pin(tokio::time::sleep(Duration::from_millis(50)));
    assert!(p.acquire(&mut stopped).await.is_none());
}

#[tokio::test]
async fn a_freed_slot_wakes_a_waiting_line() {
    let p = pool(&["http://a/v1"], 1, 1);
    let held = p.acquire(&mut never()).await.unwrap();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let _l = p2.acquire(&mut never()).await.unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    let waited = waiter.await.unwrap();
    // Woken by the release, not by the 1 s re-check.
    assert!(waited < RECHECK, "{waited:?}");
}

/// A release that raises the adaptive limit lets every line that fits go at once, not one
/// (the others would wait for the 1 s re-check).
#[tokio::test]
async fn a_raised_limit_wakes_every_line_that_fits() {
    let p = adaptive_pool(&["http://a/v1"], 64, 1);
    let limit = |p: &Arc<Pool>| p.limit(&p.state.lock().unwrap()[0]);
    // 15 answers at the full initial limit: one short of the first window of slow start.
    for _ in 0..3 {
        let ls: Vec<_> = (0..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(2)).await;
        ls.into_iter().for_each(|l| l.finish(Verdict::Answered));
    }
    let mut held: Vec<_> = (0..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(2)).await;
    for l in held.drain(1..) {
        l.finish(Verdict::Answered);
    }
    held.extend((1..INITIAL_LIMIT).map(|_| p.pick().ok().unwrap()));
    assert_eq!(limit(&p), INITIAL_LIMIT);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (p, tx) = (p.clone(), tx.clone());
            tokio::spawn(async move {
                let _lease = p.acquire(&mut never()).await.unwrap();
                tx.send(()).unwrap();
                never().await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        rx.try_recv().is_err(),
        "the waiters found room before the limit rose"
    );
    // The 16th answer closes the window: slow start doubles the limit.
    held.remove(0).finish(Verdict::Answered);
    assert!(limit(&p) > INITIAL_LIMIT + 3, "{}", limit(&p));
    for _ in 0..3 {
        tokio::time::timeout(RECHECK / 2, rx.recv())
            .await
            .expect("every waiter that fits goes at once")
            .unwrap();
    }
    waiters.iter().for_each(|w| w.abort());
}

#[tokio::test]
async fn an_overloaded_endpoint_is_paused_for_every_line() {
    let p = pool(&["http://a/v1", "http://b/v1"], 10, 1);
    let mut stop = never();
    let l = p.acquire(&mut stop).await.unwrap();
    let paused = l.idx;
    l.finish(Verdict::Overloaded(Some(Duration::from_millis(300))));
    for _ in 0..4 {
        assert_ne!(p.acquire(&mut stop).await.unwrap().idx, paused);
    }
    // The only endpoint paused: lines wait for the pause to end, then go.
    let single = pool(&["http://a/v1"], 10, 1);
    single
        .acquire(&mut stop)
        .await
        .unwrap()
        .finish(Verdict::Overloaded(Some(Duration::from_millis(300))));
    let started = Instant::now();
    let _l = single.acquire(&mut stop).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn answers_to_requests_sent_before_a_pause_do_not_escalate_it() {
    let p = pool(&["http://a/v1"], 10, 1);
    let mut stop = never();
    let early: Vec<Lease<'_>> = vec![
        p.acquire(&mut stop).await.unwrap(),
        p.acquire(&mut stop).await.unwrap(),
        p.acquire(&mut stop).await.unwrap(),
    ];
    for l in early {
        l.finish(Verdict::Overloaded(None));
    }
    assert_eq!(p.state.lock().unwrap()[0].overloads, 1);
}

#[test]
fn an_adaptive_endpoint_starts_low_and_an_overload_lowers_it_below_the_share() {
    let adaptive = adaptive_pool(&["http://a:1/v1"], 64, 1);
    let limit = |p: &Arc<Pool>| p.limit(&p.state.lock().unwrap()[0]);
    assert_eq!(limit(&adaptive), INITIAL_LIMIT);
    let leases: Vec<_> = (0..INITIAL_LIMIT)
        .map(|_| adaptive.pick().ok().unwrap())
        .collect();
    assert!(adaptive.pick().is_err(), "past the adaptive limit");
    for l in leases {
        l.finish(Verdict::Overloaded(None));
    }
    assert!(limit(&adaptive) < INITIAL_LIMIT);
    // Off, the share alone.
    let fixed = pool(&["http://a:1/v1"], 64, 1);
    assert_eq!(limit(&fixed), 64);
}

#[test]
fn health_is_asked_at_the_origin() {
    let e = Endpoint::new("u", "http://gpu-1:8000/v1/");
    assert_eq!(e.base_url, "http://gpu-1:8000/v1");
    assert_eq!(e.health_url().unwrap(), "http://gpu-1:8000/health");
    assert_eq!(e.url("/v1/models"), "http://gpu-1:8000/v1/models");
}
