//! `cargo xtask bench --ci`: the benchmark as a CI check, not a measurement. One small
//! size, a few polls in both worlds and a few commands with the debug binary (about
//! 40 s); then the report must be complete and the fast lane must have kept to its
//! budget. Its figures come from a debug build on a busy runner: they are not published.

use serde_json::Value;

/// The smallest size: 1 node, 10 guests.
pub const SIZE: (u32, u32) = (1, 10);
pub const IDLE_POLLS: usize = 3;
pub const CHANGED_POLLS: usize = 2;
pub const MOVING_POLLS: usize = 2;
pub const COMMANDS: usize = 10;
/// The fast lane's budget: `/cluster/resources` and, every `tasks_interval`,
/// `/cluster/tasks`.
pub const FAST_LANE_MAX_REQUESTS_PER_POLL: f64 = 2.0;

/// What a size's report must hold, each a JSON pointer.
const REQUIRED: &[&str] = &[
    "/objects",
    "/discovery_live_count",
    "/discovery_last_s",
    "/first_slow_round/ended_s",
    "/idle",
    "/changed",
    "/frozen",
    "/moving",
    "/fast_lane/polls",
    "/fast_lane/requests_per_poll",
    "/slow_lane/by_endpoint",
    "/agent_lane/requests",
    "/commands/burst/sent",
    "/commands/burst/bridge_cpu_s",
    "/commands/isolated/sent",
    "/discovery_retained",
    "/state_retained",
    "/rss_peak_mb",
    "/total_cpu_s",
    "/bridge_connections",
    "/lost_mqtt_connection",
];

/// What is wrong with one size's report; empty when it passes.
pub fn check(result: &Value) -> Vec<String> {
    let size = result["size"].as_str().unwrap_or("?");
    let mut problems: Vec<String> = REQUIRED
        .iter()
        .filter(|pointer| result.pointer(pointer).is_none_or(Value::is_null))
        .map(|pointer| format!("{size}: the report has no {pointer}"))
        .collect();
    let number = |pointer: &str| result.pointer(pointer).and_then(Value::as_f64);
    if let Some(objects) = number("/objects") {
        for seen in ["/discovery_live_count", "/discovery_retained"] {
            if number(seen).is_some_and(|n| n < objects) {
                problems.push(format!(
                    "{size}: {seen} is {} of {objects} objects",
                    result.pointer(seen).unwrap_or(&Value::Null)
                ));
            }
        }
    }
    if number("/fast_lane/polls") == Some(0.0) {
        problems.push(format!("{size}: no poll without slow-lane requests"));
    }
    if let Some(per_poll) = result
        .pointer("/fast_lane/requests_per_poll")
        .and_then(Value::as_object)
    {
        let total: f64 = per_poll.values().filter_map(Value::as_f64).sum();
        if total > FAST_LANE_MAX_REQUESTS_PER_POLL {
            problems.push(format!(
                "{size}: the fast lane makes {total:.2} requests per poll (at most {FAST_LANE_MAX_REQUESTS_PER_POLL}): {per_poll:?}"
            ));
        }
    }
    for mode in ["burst", "isolated"] {
        let unfinished = result
            .pointer(&format!("/commands/{mode}/finals/unfinished"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if unfinished > 0 {
            problems.push(format!("{size}: {unfinished} {mode} commands never ended"));
        }
    }
    if number("/lost_mqtt_connection").is_some_and(|n| n > 0.0) {
        problems.push(format!("{size}: the bridge lost its MQTT connection"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn complete() -> Value {
        json!({
            "size": "1x10", "objects": 20, "discovery_live_count": 20, "discovery_last_s": 0.4,
            "first_slow_round": {"ended_s": 1.2},
            "idle": {}, "changed": {}, "frozen": {}, "moving": {},
            "fast_lane": {"polls": 5, "requests_per_poll": {"GET /cluster/resources": 1.0, "GET /cluster/tasks": 0.4}},
            "slow_lane": {"by_endpoint": {}}, "agent_lane": {"requests": 3},
            "commands": {"burst": {"sent": 10, "finals": {"ok": 10}, "bridge_cpu_s": 0.1}, "isolated": {"sent": 10, "finals": {"ok": 10}}},
            "discovery_retained": 20, "state_retained": 40, "rss_peak_mb": 12.0, "total_cpu_s": 0.5,
            "bridge_connections": 1, "lost_mqtt_connection": 0,
        })
    }

    #[test]
    fn a_complete_report_within_the_budget_passes() {
        assert_eq!(check(&complete()), Vec::<String>::new());
    }

    #[test]
    fn a_missing_phase_and_a_fast_lane_over_budget_are_both_named() {
        let mut report = complete();
        report.as_object_mut().unwrap().remove("moving");
        report["fast_lane"]["requests_per_poll"]["GET /nodes/{node}/status"] = json!(1.0);
        report["commands"]["burst"]["finals"]["unfinished"] = json!(2);
        let problems = check(&report);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("no /moving"), "{problems:?}");
        assert!(
            problems[1].contains("2.40 requests per poll"),
            "{problems:?}"
        );
        assert!(
            problems[2].contains("2 burst commands never ended"),
            "{problems:?}"
        );
    }

    #[test]
    fn discovery_short_of_the_objects_fails() {
        let mut report = complete();
        report["discovery_retained"] = json!(19);
        let problems = check(&report);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("19 of 20"), "{problems:?}");
    }
}
