//! The bridge's own HTTP listener (`http.listen`) on the real binary: `/healthz` healthy,
//! with the broker down and with Proxmox down, `/metrics` counting what happened, and
//! `PVE2MQTT_LOG_FORMAT=json`.

use std::time::Duration;

use crate::support::*;

/// The real binary with `[http] listen` on a free port, and where to reach it.
struct Running {
    child: tokio::process::Child,
    base: String,
    _cfg: TestConfig,
}

fn start(sim: &pve_sim::SimHandle, broker_port: u16, envs: &[(&str, &str)]) -> Running {
    let port = free_port();
    let cfg = TestConfig::new(
        sim,
        broker_port,
        &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let child = spawn_bridge(&cfg.write(), envs);
    Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _cfg: cfg,
    }
}

/// `pve2mqtt health` (the container HEALTHCHECK) against the bridge at `base`: its exit code.
async fn health_command(base: &str) -> Option<i32> {
    let listen = base.trim_start_matches("http://");
    let output = tokio::process::Command::new(BIN)
        .args(["health", "--listen", listen])
        .output()
        .await
        .expect("run pve2mqtt health");
    output.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_and_metrics_count_polls_requests_messages_and_commands_while_all_is_well() {
    // Given the bridge with its listener, a broker and Proxmox all up
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    let bridge = start(&sim, broker.port, &[]);

    // Then /healthz answers 200 with a JSON body naming the cluster
    let body = wait_until(&bridge.base, "/healthz", "200", |status, _| status == 200).await;
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt_connected"], true);
    assert!(
        health["clusters"]["pve"]["last_poll_age_seconds"].is_number(),
        "{health}"
    );

    // And a command that is refused is counted by action and result (an action the
    // bridge does not know is reported as `unknown`)
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    probe
        .publish("pve2mqtt/pve/qemu/100/set", "frobnicate", false)
        .await;
    let metrics = wait_until(
        &bridge.base,
        "/metrics",
        "the refused command",
        |status, body| {
            status == 200
                && body
                    .contains("pve2mqtt_commands_total{action=\"unknown\",result=\"rejected\"} 1")
        },
    )
    .await;

    // And /metrics counts polls, requests by endpoint and messages published
    assert!(
        sample(
            &metrics,
            "pve2mqtt_polls_total{cluster=\"pve\",result=\"ok\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "pve2mqtt_poll_duration_seconds_count{cluster=\"pve\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "pve2mqtt_proxmox_requests_total{endpoint=\"GET /cluster/resources\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "pve2mqtt_proxmox_request_errors_total{endpoint=\"GET /cluster/resources\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&metrics, "pve2mqtt_mqtt_messages_published_total").unwrap() >= 1.0);
    assert_eq!(sample(&metrics, "pve2mqtt_mqtt_connected"), Some(1.0));
    assert_eq!(
        sample(&metrics, "pve2mqtt_mqtt_reconnects_total"),
        Some(0.0)
    );
    // One series per endpoint, not per guest or node
    assert!(!metrics.contains("/nodes/pve1/"), "{metrics}");
    assert!(metrics.contains("# TYPE pve2mqtt_polls_total counter"));

    let output = terminate(bridge.child).await;
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_naming_the_mqtt_link_while_the_broker_is_down_and_200_again_after() {
    let mut broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let bridge = start(&sim, broker.port, &[]);
    wait_until(&bridge.base, "/healthz", "200", |status, _| status == 200).await;

    // When the broker goes away
    broker.kill();

    // Then /healthz says 503 and why, and /metrics shows the link down
    let body = wait_until(&bridge.base, "/healthz", "503", |status, _| status == 503).await;
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["reasons"][0], "the MQTT link is down", "{health}");
    assert_eq!(
        health_command(&bridge.base).await,
        Some(1),
        "the HEALTHCHECK fails"
    );
    let (_, metrics) = get(&bridge.base, "/metrics").await.expect("metrics");
    assert_eq!(
        sample(&metrics, "pve2mqtt_mqtt_connected"),
        Some(0.0),
        "{metrics}"
    );

    // And once the broker is back, healthy again with the reconnect counted
    broker.start_again().expect("broker back");
    wait_until(&bridge.base, "/healthz", "200 again", |status, _| {
        status == 200
    })
    .await;
    let (_, metrics) = get(&bridge.base, "/metrics").await.expect("metrics");
    assert!(
        sample(&metrics, "pve2mqtt_mqtt_reconnects_total").unwrap() >= 1.0,
        "{metrics}"
    );

    let output = terminate(bridge.child).await;
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_naming_the_cluster_when_proxmox_is_not_polled_within_three_intervals() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let bridge = start(&sim, broker.port, &[]);
    wait_until(&bridge.base, "/healthz", "200", |status, _| status == 200).await;

    // When Proxmox stops answering (poll.interval is 1s in the test config)
    sim.stop().await;

    // Then /healthz says 503 naming the cluster, while the MQTT link is still up
    let body = wait_until(&bridge.base, "/healthz", "503", |status, _| status == 503).await;
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let reasons = health["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "{health}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.starts_with("cluster pve: last polled") && reason.contains("limit 3s"),
        "{reason}"
    );
    assert_eq!(health["mqtt_connected"], true);
    // And the failed requests are counted for their endpoint
    let (_, metrics) = get(&bridge.base, "/metrics").await.expect("metrics");
    assert!(
        sample(
            &metrics,
            "pve2mqtt_proxmox_request_errors_total{endpoint=\"GET /cluster/resources\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "pve2mqtt_polls_total{cluster=\"pve\",result=\"failed\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );

    let output = terminate(bridge.child).await;
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let bridge = start(&sim, broker.port, &[("PVE2MQTT_LOG_FORMAT", "json")]);
    wait_until(&bridge.base, "/healthz", "200", |status, _| status == 200).await;
    let output = terminate(bridge.child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"HTTP listener: /healthz and /metrics\"")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_started_before_its_broker_keeps_running_unhealthy_until_the_broker_is_up() {
    // Given no broker yet on the configured port (the add-on's case: Mosquitto still starting)
    let sim = start_sim(sim_options()).await;
    let port = free_port();
    let mut bridge = start(&sim, port, &[]);

    // Then the bridge does not exit: it answers 503 naming the MQTT link
    let body = wait_until(&bridge.base, "/healthz", "503", |status, _| status == 503).await;
    assert!(body.contains("the MQTT link is down"), "{body}");
    assert!(
        bridge.child.try_wait().expect("try_wait").is_none(),
        "the bridge exited"
    );

    // And once the broker is up, it connects and is healthy
    let _broker = Mosquitto::start_with(port, "");
    wait_until(&bridge.base, "/healthz", "200", |status, _| status == 200).await;
    let output = terminate(bridge.child).await;
    assert_eq!(output.status.code(), Some(0));
}

/// Issue 10: a scheduled slow-lane or agent-lane round's news goes out with the next poll's
/// view instead of a whole extra view (and publisher pass) of its own. Counted by
/// `/metrics`: views built against successful polls, in a world whose node figures move
/// on every slow round (so every round has news).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rounds_news_rides_with_the_next_poll_instead_of_a_view_of_its_own() {
    // Given a simulator whose figures change every 500 ms, polls every 1 s and a slow
    // round every 2 s
    let broker = Mosquitto::start();
    let sim = start_sim(pve_sim::SimOptions {
        frozen: false,
        stats_interval: Duration::from_millis(500),
        ..sim_options()
    })
    .await;
    let bridge = start(&sim, broker.port, &[]);

    // When the bridge has polled ten times (five slow rounds, each with news)
    let metrics = wait_until(&bridge.base, "/metrics", "ten polls", |status, body| {
        status == 200
            && sample(body, "pve2mqtt_polls_total{cluster=\"pve\",result=\"ok\"}")
                .is_some_and(|polls| polls >= 10.0)
    })
    .await;

    // Then it built one view per poll, plus at most the first round's two (applied at
    // once: its health requests, which guests' discovery waits for, then disks, pools and
    // backups) and one a poll may be building right now
    let polls = sample(
        &metrics,
        "pve2mqtt_polls_total{cluster=\"pve\",result=\"ok\"}",
    )
    .unwrap();
    let views = sample(&metrics, "pve2mqtt_views_total{cluster=\"pve\"}").unwrap();
    assert!(views >= polls, "{metrics}");
    assert!(
        views - polls <= 3.0,
        "views {views} for {polls} polls: {metrics}"
    );

    let output = terminate(bridge.child).await;
    assert_eq!(output.status.code(), Some(0));
}
