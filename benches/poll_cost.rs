//! CPU cost of one fast-lane poll, stage by stage, in one process: decode the
//! `/cluster/resources` answer, build the cluster view, compare it with the previous one
//! (what an idle poll does), and render every state payload (what a republish does).
//! The poller does decode and build in one pass, row by row ("streamed"); the separate
//! decode and build columns say how that splits.
//!
//! `scripts/bench.sh` measures the whole bridge as the OS sees it (CPU time, RSS); this
//! benchmark says where that time goes, so a change to one stage can be judged alone.
//! The answer comes from the simulator over HTTP, so it is the same bytes the bridge
//! decodes in the end-to-end benchmark.
//!
//! ```text
//! cargo bench --bench poll_cost                  # 10 nodes x 5000 guests
//! cargo bench --bench poll_cost -- 3x300 10x1000 # other sizes
//! ```
//!
//! Under `cargo test`/`nextest` (no `--bench` argument) it does nothing, like a
//! criterion bench, so the test run stays fast.
use std::time::{Duration, Instant};

use pve2mqtt::model::{build_view, RateMemory, SlowData, ViewBuilder};
use pve2mqtt::publisher::state_json;
use pve2mqtt::pve::{decode_cluster_resources, for_each_cluster_resource};
use pve_sim::{self as sim, SimOptions};

/// Runs per stage; the fastest is printed: on a shared, noisy machine the minimum is the
/// run least disturbed by others, the closest to the stage's own cost.
const RUNS: usize = 30;

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
    println!("| size | answer KiB | decode ms | build view ms | streamed decode+build ms | idle diff ms | render all states ms | per 1000 guests (streamed+diff) ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for (nodes, guests) in sizes {
        let body = runtime.block_on(fetch(nodes, guests));
        let decode = fastest(|| {
            let rows = decode_cluster_resources(&body).expect("decode");
            std::hint::black_box(rows);
        });
        let rows = decode_cluster_resources(&body).expect("decode");
        let slow = SlowData::default();
        let mut rates = RateMemory::default();
        let url = "https://pve:8006";
        // An idle poll builds on the view before it (nothing changed in between).
        let previous = build_view("bench", url, &rows, &slow, &mut rates, 0.0, None);
        let mut now = 0.0;
        let build = fastest(|| {
            now += 10.0;
            let view = build_view("bench", url, &rows, &slow, &mut rates, now, Some(&previous));
            std::hint::black_box(view);
        });
        let streamed = fastest(|| {
            now += 10.0;
            let mut builder =
                ViewBuilder::new("bench", url, &slow, &mut rates, now, Some(&previous));
            for_each_cluster_resource(&body, |row| builder.add(&row)).expect("decode");
            std::hint::black_box(builder.finish());
        });
        let current = build_view("bench", url, &rows, &slow, &mut rates, now, Some(&previous));
        let diff = fastest(|| {
            let changed = current
                .objects()
                .filter(|object| !previous.same_state(&current, object))
                .count();
            std::hint::black_box(changed);
        });
        let render = fastest(|| {
            for object in current.objects() {
                std::hint::black_box(state_json(&current, &object));
            }
        });
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per_thousand = ms(streamed + diff) * 1000.0 / guests as f64;
        println!(
            "| {nodes}x{guests} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            body.len() / 1024,
            ms(decode),
            ms(build),
            ms(streamed),
            ms(diff),
            ms(render),
            per_thousand
        );
    }
}

/// One `/cluster/resources` answer of a generated cluster, from the simulator over HTTP.
async fn fetch(nodes: usize, guests: usize) -> Vec<u8> {
    let handle = sim::start(SimOptions {
        tls: false,
        nodes: Some(nodes),
        guests: Some(guests),
        ..SimOptions::default()
    })
    .await
    .expect("simulator");
    let body = reqwest::Client::new()
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
        .to_vec();
    handle.stop().await;
    body
}

fn fastest(mut stage: impl FnMut()) -> Duration {
    stage(); // warm-up: first-touch allocations are not what a steady poll pays
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            stage();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}
