//! CPU cost of one fast-lane poll, stage by stage, in one process: decode the
//! `/cluster/resources` answer, build the cluster view, compare it with the previous one
//! (what an idle poll does), and render every state payload (what a republish does).
//! The poller does decode and build in one pass, row by row ("streamed"); the separate
//! decode and build columns say how that splits.
//!
//! The poller remembers the guest rows of the last answer (`RowMemo`) and decodes only
//! the ones that changed: "quiet poll" is such a build on an answer with the same rows
//! in other bytes (Proxmox writes each row's keys, and the guests, in another order on
//! every call: a still cluster, or a poll between two of pvestatd's broadcasts), "moving
//! poll" one on an answer in which every running guest changed (two answers of the
//! simulator, one pvestatd broadcast apart, in turn). "rebuild from the same answer" is a
//! view built again from the bytes of the last answer (a command's result, the first
//! slow round's news): those are not scanned for their rows again.
//!
//! `scripts/bench.sh` measures the whole bridge as the OS sees it (CPU time, RSS); this
//! benchmark says where that time goes, so a change to one stage can be judged alone.
//! The answer comes from the simulator over HTTP, so it is the same bytes the bridge
//! decodes in the end-to-end benchmark.
//!
//! ```text
//! cargo bench --bench poll_cost                  # 10 nodes x 5000 guests
//! cargo bench --bench poll_cost -- 3x300 10x1000 # other sizes
//! POLL_COST_RUNS=2 valgrind --tool=callgrind target/release/deps/poll_cost-* --bench
//!                                                # instructions per stage: each is a
//!                                                # function `stage_*` (inclusive cost)
//! ```
//!
//! Under `cargo test`/`nextest` (no `--bench` argument) it does nothing, like a
//! criterion bench, so the test run stays fast.
use std::time::{Duration, Instant};

use std::sync::Arc;

use pve2mqtt::model::{
    build_view, AgentData, ClusterView, RateMemory, RowMemo, SlowData, ViewBuilder,
};
use pve2mqtt::publisher::state_json;
use pve2mqtt::pve::{decode_cluster_resources, for_each_cluster_resource, Resource};
use pve_sim::{self as sim, SimOptions};

/// Runs per stage (`POLL_COST_RUNS`, default 30); the fastest is printed: on a shared,
/// noisy machine the minimum is the run least disturbed by others, the closest to the
/// stage's own cost.
fn runs() -> usize {
    std::env::var("POLL_COST_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30)
}

const URL: &str = "https://pve:8006";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut sizes: Vec<(usize, usize)> = args
        .iter()
        .filter_map(|a| {
            let (nodes, guests) = a.split_once('x')?;
            Some((nodes.parse().ok()?, guests.parse().ok()?))
        })
        .collect();
    if sizes.is_empty() {
        sizes.push((10, 5000));
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("| size | answer KiB | decode ms | build view ms | streamed decode+build ms | quiet poll ms | rebuild from the same answer ms | quiet poll after slow-lane news ms | moving poll ms | idle diff ms | idle diff, shared states skipped ms | render all states ms | per 1000 guests (quiet poll+diff) ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (nodes, guests) in sizes {
        let (body, reordered, moved) = runtime.block_on(fetch(nodes, guests));
        let decode = fastest(|| stage_decode(&body));
        let rows = decode_cluster_resources(&body).expect("decode");
        let slow = Arc::new(SlowData::default());
        let agent = Arc::new(AgentData::default());
        let mut rates = RateMemory::default();
        // An idle poll builds on the view before it (nothing changed in between).
        let previous = build_view("bench", URL, &rows, &slow, &mut rates, 0.0, None);
        let mut now = 0.0;
        let build = fastest(|| {
            now += 10.0;
            stage_build_view(&rows, &slow, &mut rates, now, &previous);
        });
        let streamed = fastest(|| {
            now += 10.0;
            stage_streamed(&body, &slow, &mut rates, now, &previous);
        });
        // The poller's path: the row memory, warmed by one build on this answer; then the
        // same rows in other bytes, in turn.
        let mut memo = RowMemo::default();
        now += 10.0;
        let remembered = memo_build(
            &body,
            (&slow, &agent),
            (&mut rates, &mut memo),
            now,
            Some(&previous),
        );
        let mut last = remembered.clone();
        let mut turn = false;
        let quiet = fastest(|| {
            now += 5.0;
            turn = !turn;
            let answer = if turn { &reordered } else { &body };
            last = stage_quiet_poll(answer, (&slow, &agent), (&mut rates, &mut memo), now, &last);
        });
        // A view built again from the last answer's bytes.
        now += 5.0;
        let rebuilt_previous = memo_build(
            &body,
            (&slow, &agent),
            (&mut rates, &mut memo),
            now,
            Some(&last),
        );
        let rebuild = fastest(|| {
            now += 5.0;
            stage_rebuild(
                &body,
                (&slow, &agent),
                (&mut rates, &mut memo),
                now,
                &rebuilt_previous,
            );
        });
        // A poll after a slow-lane round brought news (new data, about no guest): each
        // remembered guest is compared with what the lanes say of it, none is decoded.
        let mut fresh_slow = slow.clone();
        let mut news_last = rebuilt_previous.clone();
        let slow_news = fastest(|| {
            now += 5.0;
            turn = !turn;
            let answer = if turn { &reordered } else { &body };
            fresh_slow = Arc::new(SlowData::clone(&fresh_slow));
            news_last = stage_quiet_poll(
                answer,
                (&fresh_slow, &agent),
                (&mut rates, &mut memo),
                now,
                &news_last,
            );
        });
        // In turn the two answers: every running guest's row differs from the last one.
        let moving = fastest(|| {
            now += 5.0;
            turn = !turn;
            let answer = if turn { &moved } else { &body };
            last = stage_moving_poll(answer, (&slow, &agent), (&mut rates, &mut memo), now, &last);
        });
        drop(rows);
        let current = build_view(
            "bench",
            URL,
            &decode_cluster_resources(&body).expect("decode"),
            &slow,
            &mut rates,
            now,
            Some(&previous),
        );
        let diff = fastest(|| stage_idle_diff(&previous, &current));
        let diff_shared = fastest(|| stage_idle_diff_shared(&previous, &current));
        let render = fastest(|| stage_render(&current));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per_thousand = ms(quiet + diff_shared) * 1000.0 / guests as f64;
        println!(
            "| {nodes}x{guests} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            body.len() / 1024,
            ms(decode),
            ms(build),
            ms(streamed),
            ms(quiet),
            ms(rebuild),
            ms(slow_news),
            ms(moving),
            ms(diff),
            ms(diff_shared),
            ms(render),
            per_thousand
        );
    }
}

#[inline(never)]
fn stage_decode(body: &[u8]) {
    let rows = decode_cluster_resources(body).expect("decode");
    std::hint::black_box(rows);
}

#[inline(never)]
fn stage_build_view(
    rows: &[Resource],
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
    previous: &ClusterView,
) {
    let view = build_view("bench", URL, rows, slow, rates, now, Some(previous));
    std::hint::black_box(view);
}

#[inline(never)]
fn stage_streamed(
    body: &[u8],
    slow: &SlowData,
    rates: &mut RateMemory,
    now: f64,
    previous: &ClusterView,
) {
    let mut builder = ViewBuilder::new("bench", URL, slow, rates, now, Some(previous));
    for_each_cluster_resource(body, |row| builder.add(&row)).expect("decode");
    std::hint::black_box(builder.finish());
}

/// A build as the poller does it, with the row memory (an answer byte for byte the last
/// one is read through the remembered rows, not scanned again).
fn memo_build(
    body: &[u8],
    (slow, agent): (&Arc<SlowData>, &Arc<AgentData>),
    (rates, memo): (&mut RateMemory, &mut RowMemo),
    now: f64,
    previous: Option<&ClusterView>,
) -> ClusterView {
    let mut builder = ViewBuilder::new("bench", URL, slow, rates, now, previous)
        .agent(agent)
        .memo(memo, slow, agent);
    builder.add_answer(body, |_, _| Ok(())).expect("decode");
    builder.finish()
}

/// A poll whose answer has the rows of the last one, in other bytes.
#[inline(never)]
fn stage_quiet_poll(
    body: &[u8],
    data: (&Arc<SlowData>, &Arc<AgentData>),
    memory: (&mut RateMemory, &mut RowMemo),
    now: f64,
    previous: &ClusterView,
) -> ClusterView {
    memo_build(body, data, memory, now, Some(previous))
}

/// A view built again from the last answer (the same bytes).
#[inline(never)]
fn stage_rebuild(
    body: &[u8],
    data: (&Arc<SlowData>, &Arc<AgentData>),
    memory: (&mut RateMemory, &mut RowMemo),
    now: f64,
    previous: &ClusterView,
) {
    std::hint::black_box(memo_build(body, data, memory, now, Some(previous)));
}

#[inline(never)]
fn stage_moving_poll(
    body: &[u8],
    data: (&Arc<SlowData>, &Arc<AgentData>),
    memory: (&mut RateMemory, &mut RowMemo),
    now: f64,
    previous: &ClusterView,
) -> ClusterView {
    memo_build(body, data, memory, now, Some(previous))
}

#[inline(never)]
fn stage_idle_diff(previous: &ClusterView, current: &ClusterView) {
    let changed = current
        .objects()
        .filter(|object| !previous.same_state(current, object))
        .count();
    std::hint::black_box(changed);
}

/// The publisher's pass since it skips guests whose state is the very state of the
/// last view: one walk over both views' guests, then the other objects.
#[inline(never)]
fn stage_idle_diff_shared(previous: &ClusterView, current: &ClusterView) {
    let changes = current.guest_changes(previous);
    let changed = current
        .objects_with_guests(changes.changed.into_iter())
        .filter(|object| !previous.same_state(current, object))
        .count();
    std::hint::black_box((changed, changes.gone));
}

#[inline(never)]
fn stage_render(current: &ClusterView) {
    for object in current.objects() {
        std::hint::black_box(state_json(current, &object));
    }
}

/// Three `/cluster/resources` answers of a generated cluster, from the simulator over
/// HTTP: two with the same figures (one pvestatd broadcast; the rows in other bytes, as
/// Proxmox writes them), and one of the next broadcast (every running guest moved).
async fn fetch(nodes: usize, guests: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    const BROADCAST: Duration = Duration::from_secs(2);
    let handle = sim::start(SimOptions {
        tls: false,
        nodes: Some(nodes),
        guests: Some(guests),
        stats_interval: BROADCAST,
        ..SimOptions::default()
    })
    .await
    .expect("simulator");
    let get = || async {
        reqwest::Client::new()
            .get(format!("{}/api2/json/cluster/resources", handle.base_url()))
            .header(
                "Authorization",
                format!("PVEAPIToken={}", sim::DEFAULT_TOKEN),
            )
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /cluster/resources")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    };
    // The same rows, whatever their order and the order of their members.
    let rows = |body: &[u8]| {
        let mut rows: Vec<String> = decode_cluster_resources(body)
            .expect("decode")
            .iter()
            .map(|row| format!("{row:?}"))
            .collect();
        rows.sort();
        rows
    };
    let (first, again) = loop {
        let (first, again) = (get().await, get().await);
        // Asked across a broadcast: ask again.
        if rows(&first) == rows(&again) {
            break (first, again);
        }
    };
    assert_ne!(
        first, again,
        "the simulator writes the rows in another order"
    );
    tokio::time::sleep(BROADCAST).await;
    let moved = get().await;
    handle.stop().await;
    (first, again, moved)
}

fn fastest(mut stage: impl FnMut()) -> Duration {
    stage(); // warm-up: first-touch allocations are not what a steady poll pays
    (0..runs())
        .map(|_| {
            let start = Instant::now();
            stage();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}
