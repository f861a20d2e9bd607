//! The limiter against a simulated GPU (see `sim`): convergence near the knee, overload, changes
//! of capacity and of service time, the server's gauges, and bounds for any input.

mod sim;

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Limiter, LimiterConfig};
use sim::{Server, Sim, MS};

/// The limit stays within [0.8·C, 1.3·C] after warm-up, and the server runs at ≥ 90 % capacity.
fn assert_near_knee(sim: &Sim, slots: usize, service: u64, from: u64, to: u64, what: &str) {
    let (lo, mean, hi) = sim.limit_stats(from, to);
    let tput = sim.throughput(from, to, slots, service);
    println!(
        "{what}: C={slots} S={}ms limit min {lo} mean {mean:.1} max {hi}, throughput {tput:.3}",
        service / MS
    );
    // A limit is a whole number: for C = 4, 0.8·C..1.3·C is 3.2..5.2 and 3 is as near as 4.
    let c = slots as f64;
    let (floor, ceil) = ((0.8 * c).floor(), (1.3 * c).ceil());
    assert!(
        lo as f64 >= floor && hi as f64 <= ceil,
        "{what}: limit {lo}..{hi} for C={slots}"
    );
    assert!(tput >= 0.9, "{what}: throughput {tput:.3} for C={slots}");
}

#[test]
fn converges_near_the_knee_for_several_servers() {
    for (slots, service_ms) in [(32, 100), (8, 20), (64, 1000), (4, 50), (128, 200)] {
        let service = service_ms * MS;
        let mut sim = Sim::one(slots, service_ms);
        sim.run_until(600 * service);
        assert_near_knee(
            &sim,
            slots,
            service,
            60 * service,
            600 * service,
            "steady ±5%",
        );
    }
}

/// Identical service times keep the slots in lock-step (every answer of a batch at once), which
/// no real GPU does; the limit must still find the knee.
#[test]
fn converges_with_identical_service_times() {
    for (slots, service_ms) in [(32, 100), (8, 20), (64, 1000)] {
        let service = service_ms * MS;
        let mut sim = Sim::one(slots, service_ms);
        sim.server.jitter = 0.0;
        sim.run_until(600 * service);
        assert_near_knee(
            &sim,
            slots,
            service,
            60 * service,
            600 * service,
            "steady exact",
        );
    }
}

/// A noisy server (service times ±20 %): the latency of a window is noisy too, so the limit
/// strays more; asserted on the share of time spent near the knee.
#[test]
fn converges_with_jittery_service_times() {
    for (slots, service_ms) in [(32, 100), (8, 20), (64, 1000)] {
        let service = service_ms * MS;
        let mut sim = Sim::one(slots, service_ms);
        sim.server.jitter = 0.2;
        sim.run_until(600 * service);
        let (from, to) = (60 * service, 600 * service);
        let (lo, mean, hi) = sim.limit_stats(from, to);
        let c = slots as f64;
        let all = sim.limits(from, to).count();
        let near = sim
            .limits(from, to)
            .filter(|&l| (0.8 * c..=1.3 * c).contains(&(l as f64)))
            .count();
        let tput = sim.throughput(from, to, slots, service);
        println!(
            "jitter ±20%: C={slots} S={service_ms}ms limit min {lo} mean {mean:.1} max {hi}, {:.1}% of the time within [0.8C, 1.3C], throughput {tput:.3}",
            100.0 * near as f64 / all as f64
        );
        assert!(
            near * 100 >= all * 90,
            "C={slots}: only {near} of {all} samples near the knee"
        );
        assert!(
            lo as f64 >= 0.6 * c && hi as f64 <= 1.5 * c,
            "C={slots}: limit {lo}..{hi}"
        );
        assert!(tput >= 0.9, "C={slots}: throughput {tput:.3}");
    }
}

/// Service times as varied as LLM answers (exponential: most short, some ten times longer).
/// A window's mean is then noisy enough that a plain minimum would read noise as a queue.
#[test]
fn varied_service_times_are_not_mistaken_for_a_queue() {
    for (slots, service_ms) in [(32, 100), (8, 20)] {
        let service = service_ms * MS;
        let mut sim = Sim::one(slots, service_ms);
        sim.server.exponential = true;
        sim.run_until(1_000 * service);
        let (from, to) = (100 * service, 1_000 * service);
        let (lo, mean, hi) = sim.limit_stats(from, to);
        let tput = sim.throughput(from, to, slots, service);
        println!("exponential: C={slots} S={service_ms}ms limit min {lo} mean {mean:.1} max {hi}, throughput {tput:.3}");
        let c = slots as f64;
        assert!(tput >= 0.9, "C={slots}: throughput {tput:.3}");
        assert!(
            lo as f64 >= 0.6 * c && hi as f64 <= 1.5 * c,
            "C={slots}: limit {lo}..{hi}"
        );
    }
}

#[test]
fn replicas_sharing_one_server_converge_together() {
    let (slots, service) = (32, 100 * MS);
    let cfg = LimiterConfig::new(4, 1, 1000);
    let mut sim = Sim::new(Server::new(slots, service), 3, cfg);
    sim.run_until(600 * service);
    assert_near_knee(
        &sim,
        slots,
        service,
        60 * service,
        600 * service,
        "3 replicas",
    );
}

#[test]
fn a_gateway_answering_429_past_q_waiting_sees_few_429s_after_convergence() {
    for q in [16, 4] {
        let (slots, service) = (32, 100 * MS);
        let mut sim = Sim::one(slots, 100);
        sim.server.max_waiting = Some(q);
        sim.run_until(600 * service);
        let (from, to) = (60 * service, 600 * service);
        let rejected = sim.rejected_in(from, to);
        let answered = sim
            .answered
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count();
        let tput = sim.throughput(from, to, slots, service);
        println!(
            "429 past {q}: {rejected} × 429 for {answered} answers after warm-up ({} during warm-up), throughput {tput:.3}",
            sim.rejected_in(0, from)
        );
        assert!(
            rejected * 200 <= answered,
            "too many 429s past {q}: {rejected} for {answered}"
        );
        assert!(
            tput >= 0.9,
            "throughput {tput:.3} behind a 429 gateway past {q}"
        );
    }
}

#[test]
fn the_limit_follows_the_capacity_down_and_back_up() {
    let service = 100 * MS;
    let mut sim = Sim::one(32, 100);
    sim.run_until(200 * service);
    sim.server.set_slots(16, sim.now);
    sim.run_until(400 * service);
    assert_near_knee(&sim, 16, service, 230 * service, 400 * service, "halved");
    sim.server.set_slots(32, sim.now);
    sim.run_until(600 * service);
    assert_near_knee(
        &sim,
        32,
        service,
        460 * service,
        600 * service,
        "doubled back",
    );
}

#[test]
fn the_min_rtt_is_relearned_when_the_service_time_changes() {
    let mut sim = Sim::one(32, 100);
    sim.run_until(20_000 * MS);
    let before = sim.clients[0].limiter.min_rtt().expect("measured");
    assert!(before.as_millis().abs_diff(100) <= 5, "min rtt {before:?}");

    // Longer prompts: the latency doubles with no queue at all; it must not throttle for good.
    sim.server.service = 200 * MS;
    sim.run_until(40_000 * MS);
    let after = sim.clients[0].limiter.min_rtt().expect("measured");
    assert!(
        after.as_millis().abs_diff(200) <= 10,
        "min rtt after the service time doubled: {after:?}"
    );
    let (lo, _, _) = sim.limit_stats(20_000 * MS, 40_000 * MS);
    println!("service time doubled: lowest limit during the change {lo}");
    assert!(lo >= 8, "the limit collapsed to {lo} while re-learning");
    assert_near_knee(
        &sim,
        32,
        200 * MS,
        26_000 * MS,
        40_000 * MS,
        "service time doubled",
    );

    // Shorter ones: the lower latency is the new baseline at once.
    sim.server.service = 50 * MS;
    sim.run_until(50_000 * MS);
    let shorter = sim.clients[0].limiter.min_rtt().expect("measured");
    assert!(
        shorter.as_millis().abs_diff(50) <= 5,
        "min rtt after the service time halved: {shorter:?}"
    );
    assert_near_knee(
        &sim,
        32,
        50 * MS,
        43_000 * MS,
        50_000 * MS,
        "service time halved",
    );
}

#[test]
fn an_overload_storm_is_one_decrease_per_round_trip() {
    let t0 = Instant::now();
    let mut limiter = Limiter::new(LimiterConfig::new(100, 1, 1000), t0);
    // Learn a 100 ms round trip first.
    let start = t0 + Duration::from_millis(200);
    for i in 0..100 {
        limiter.on_success(
            Duration::from_millis(100),
            100,
            start + Duration::from_micros(i),
        );
    }
    assert_eq!(limiter.latency(), Some(Duration::from_millis(100)));
    let before = limiter.limit();
    let storm = t0 + Duration::from_secs(1);
    for i in 0..30 {
        limiter.on_overload(storm + Duration::from_millis(i));
    }
    let once = limiter.limit();
    assert_eq!(
        once,
        (before as f64 * 0.7) as usize,
        "30 × 429 within a round trip are one cut"
    );
    // A storm one round trip later is a new congestion event.
    for i in 0..30 {
        limiter.on_overload(storm + Duration::from_millis(150 + i));
    }
    assert_eq!(limiter.limit(), (once as f64 * 0.7) as usize);
}

#[test]
fn an_idle_route_does_not_grow_its_limit() {
    let t0 = Instant::now();
    let mut limiter = Limiter::new(LimiterConfig::new(10, 1, 1000), t0);
    for i in 1..10_000u64 {
        // One request at a time, always fast: nothing says 40 at once would be.
        limiter.on_success(
            Duration::from_millis(10),
            1,
            t0 + Duration::from_millis(20 * i),
        );
    }
    assert_eq!(limiter.limit(), 10);
}

#[test]
fn gauges_keep_the_server_queue_empty_and_a_slot_free() {
    let (slots, service) = (32, 100 * MS);
    let mut sim = Sim::one(slots, 100).with_gauges(50 * MS);
    sim.run_until(600 * service);
    let (from, to) = (60 * service, 600 * service);
    let seen: Vec<_> = sim
        .gauges
        .iter()
        .filter(|(t, _, _)| (from..to).contains(t))
        .collect();
    let queued = seen.iter().filter(|(_, w, _)| *w > 0).count();
    let full = seen.iter().filter(|(_, _, r)| *r >= slots).count();
    let (lo, mean, hi) = sim.limit_stats(from, to);
    let tput = sim.throughput(from, to, slots, service);
    println!(
        "gauges: waiting > 0 in {queued}/{} samples, all slots busy in {full}, limit {lo}/{mean:.1}/{hi}, throughput {tput:.3}",
        seen.len()
    );
    assert!(
        queued * 50 <= seen.len(),
        "the server queued in {queued} of {} samples",
        seen.len()
    );
    assert!(
        full * 10 <= seen.len(),
        "no slot free in {full} of {} samples",
        seen.len()
    );
    assert!(tput >= 0.9, "throughput {tput:.3}");
}

/// Three replicas with the gauges: the slow start's overshoot is cut at the first queued sample,
/// the limits end near equal shares of a full-but-one GPU, and when one replica runs out of
/// lines the two left take its room within a few samples (otherwise the batch's last chunks
/// crawl at whatever small limit their replica had).
#[test]
fn replicas_with_gauges_share_equally_and_take_an_idle_ones_room() {
    let (slots, service, every) = (32, 100 * MS, 250 * MS);
    let cfg = LimiterConfig::new(4, 1, 1000);
    let mut sim = Sim::new(Server::new(slots, service), 3, cfg).with_gauges(every);
    sim.run_until(60_000 * MS);
    // The doubling overshoots once; the queue it makes is gone within a second.
    let queued: Vec<_> = sim.gauges.iter().filter(|g| g.1 > 0).collect();
    let first = queued.first().map_or(0, |g| g.0);
    let start_peak = queued.iter().map(|g| g.1).max().unwrap_or(0);
    let late = queued.iter().filter(|g| g.0 > first + 1_000 * MS).count();
    let limits: Vec<_> = sim.clients.iter().map(|c| c.limiter.limit()).collect();
    let tput = sim.throughput(30_000 * MS, 60_000 * MS, slots, service);
    println!(
        "gauges, 3 replicas: limits {limits:?}, throughput {tput:.3}; slow start queued {start_peak} \
         at {} ms, then queued in {late} of {} samples",
        first / MS,
        sim.gauges.len()
    );
    assert!(start_peak <= slots / 2, "slow start queued {start_peak}");
    assert!(
        late * 20 <= sim.gauges.len(),
        "queued in {late} samples after the slow start"
    );
    for l in &limits {
        assert!((9..=12).contains(l), "limits {limits:?}: not near 31 / 3");
    }
    assert!(tput >= 0.9, "throughput {tput:.3}");

    sim.clients[2].active = false;
    sim.run_until(62_000 * MS);
    sim.run_until(65_000 * MS);
    let left: usize = sim.clients[..2].iter().map(|c| c.limiter.limit()).sum();
    let tput = sim.throughput(62_000 * MS, 65_000 * MS, slots, service);
    println!("one replica idle: the two left have {left}, throughput {tput:.3}");
    assert!(left >= 29, "the two replicas left have {left} of 31");
    assert!(
        tput >= 0.88,
        "throughput {tput:.3} once one replica went idle"
    );
}

#[test]
fn gauges_find_a_capacity_that_grew() {
    let service = 100 * MS;
    let mut sim = Sim::one(16, 100).with_gauges(50 * MS);
    sim.run_until(100 * service);
    let (_, _, hi) = sim.limit_stats(50 * service, 100 * service);
    assert!(hi <= 16, "limit {hi} above 16 slots");
    sim.server.set_slots(32, sim.now);
    sim.run_until(1_000 * service);
    let (lo, mean, hi) = sim.limit_stats(800 * service, 1_000 * service);
    println!("gauges, capacity 16 → 32: limit {lo}/{mean:.1}/{hi} after 70 s");
    assert!(
        lo >= 26 && hi <= 33,
        "limit {lo}..{hi} after the capacity doubled"
    );
}

#[test]
fn an_unusable_config_is_made_safe() {
    let t0 = Instant::now();
    let limiter = Limiter::new(LimiterConfig::new(0, 0, 0), t0);
    assert_eq!(limiter.limit(), 1);
    let limiter = Limiter::new(LimiterConfig::new(50, 10, 5), t0);
    assert_eq!(limiter.limit(), 10);
}

#[derive(Debug, Clone)]
enum Op {
    Success { rtt_us: u64, in_flight: usize },
    Overload,
    Gauges { waiting: f64, running: f64 },
}

fn op() -> impl Strategy<Value = (u64, Op)> {
    let gauge = prop_oneof![
        Just(f64::NAN),
        Just(-1.0),
        Just(f64::INFINITY),
        0.0..500.0f64
    ];
    let op = prop_oneof![
        6 => (0..10_000_000u64, 0..2_000usize).prop_map(|(rtt_us, in_flight)| Op::Success { rtt_us, in_flight }),
        1 => Just(Op::Overload),
        2 => (gauge.clone(), gauge).prop_map(|(waiting, running)| Op::Gauges { waiting, running }),
    ];
    (0..5_000_000u64, op)
}

proptest! {
    #[test]
    fn the_limit_stays_within_its_bounds(
        initial in 0..300usize,
        min in 0..50usize,
        span in 0..300usize,
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let t0 = Instant::now();
        let cfg = LimiterConfig::new(initial, min, min + span);
        let (lo, hi) = (min.max(1), (min + span).max(1));
        let mut limiter = Limiter::new(cfg, t0);
        let mut now = t0;
        for (advance_us, op) in ops {
            now += Duration::from_micros(advance_us);
            match op {
                Op::Success { rtt_us, in_flight } => {
                    limiter.on_success(Duration::from_micros(rtt_us), in_flight, now)
                }
                Op::Overload => limiter.on_overload(now),
                Op::Gauges { waiting, running } => limiter.on_server_queue(waiting, running, 3, now),
            }
            let limit = limiter.limit();
            prop_assert!(lo <= limit && limit <= hi, "limit {} outside [{}, {}]", limit, lo, hi);
        }
    }
}

/// `cargo test --release --lib cost_per_call -- --ignored --nocapture`
#[test]
#[ignore]
fn cost_per_call() {
    // Latencies within ±10 %, then spread over 0.1..1.9 ms (the window's precision check then
    // runs on every answer until it is met).
    for (what, spread) in [("steady", 200), ("varied", 1_800)] {
        let t0 = Instant::now();
        let mut limiter = Limiter::new(LimiterConfig::new(32, 1, 64), t0);
        let n = 1_000_000u64;
        let started = Instant::now();
        for i in 0..n {
            let now = t0 + Duration::from_micros(i * 10);
            let rtt = Duration::from_micros(1_000 - spread / 2 + (i * 7919) % spread);
            limiter.on_success(std::hint::black_box(rtt), 32, now);
        }
        let per_call = started.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "on_success, {what} latencies: {per_call:.1} ns/call (limit {})",
            limiter.limit()
        );
        std::hint::black_box(&limiter);
    }
}
