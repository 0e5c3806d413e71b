use serde_json::json;

use super::*;

fn command(id: &str, acked: bool, purpose: &str) -> Command {
    Command {
        id: id.into(),
        vmid: 100,
        kind: "qemu".into(),
        action: "start".into(),
        sent_at: 10.0,
        retained: false,
        acked,
        purpose: purpose.into(),
        states: Vec::new(),
        finals: Vec::new(),
        upid: None,
    }
}

fn observer_with(commands: &[Command]) -> Observer {
    let mut observer = Observer::default();
    for c in commands {
        observer.commands.insert(c.id.clone(), c.clone());
    }
    observer
}

const TASK: &str = "pve2mqtt/simcluster/qemu/100/task";

#[test]
fn a_hibernated_vm_must_show_suspended() {
    let hibernated = json!({"status": "stopped", "lock": "suspended"});
    assert!(same_power(&hibernated, Some("suspended")));
    assert!(!same_power(&hibernated, Some("stopped")));
}

#[test]
fn a_paused_vm_may_show_running_or_paused() {
    let paused = json!({"status": "paused", "lock": null});
    assert!(same_power(&paused, Some("running")));
    assert!(same_power(&paused, Some("paused")));
    assert!(!same_power(&paused, Some("stopped")));
}

#[test]
fn plain_power_states_must_match() {
    assert!(same_power(&json!({"status": "running"}), Some("running")));
    assert!(!same_power(&json!({"status": "running"}), Some("stopped")));
    assert!(!same_power(&json!({"status": "running"}), None));
}

#[test]
fn a_live_state_after_a_live_final_is_a_regression_but_a_retained_copy_is_not() {
    let mut o = observer_with(&[command("a", true, "random")]);
    o.on_message(1.0, TASK, br#"{"id":"a","state":"ok"}"#, false);
    o.on_message(2.0, TASK, br#"{"id":"a","state":"running"}"#, true);
    assert!(o.regressions.is_empty());
    o.on_message(3.0, TASK, br#"{"id":"a","state":"running"}"#, false);
    assert_eq!(o.regressions, ["a: 'running' after a final result"]);
}

#[test]
fn reports_with_ids_never_sent_and_cleared_topics_are_counted_apart() {
    let mut o = observer_with(&[]);
    o.on_message(1.0, TASK, br#"{"id":"x","state":"ok"}"#, false);
    o.on_message(1.0, TASK, b"", true);
    o.on_message(1.0, TASK, b"not json", false);
    o.on_message(1.0, "pve2mqtt/simcluster/qemu/100", b"{}", false);
    assert_eq!(o.unknown_ids, ["x"]);
    assert_eq!(
        (o.cleared_task_topics, o.non_json, o.task_messages),
        (1, 1, 3)
    );
}

#[test]
fn online_is_found_only_after_the_given_time() {
    let mut o = Observer::default();
    o.on_message(1.0, "pve2mqtt/bridge/state", b"online", true);
    o.on_message(5.0, "pve2mqtt/bridge/state", b"offline", false);
    o.on_message(7.0, "pve2mqtt/bridge/state", b"online", false);
    assert_eq!(o.online_after(0.0), Some(1.0));
    assert_eq!(o.online_after(2.0), Some(7.0));
    assert_eq!(o.online_after(7.0), None);
    assert_eq!(o.last_bridge_state().as_deref(), Some("online"));
}

fn classify_observed(
    o: &Observer,
    broker: &[BrokerRestart],
    bridge: &[BridgeRestart],
) -> Classified {
    classify(o.commands.values(), broker, bridge, &BTreeSet::new())
}

#[test]
fn the_same_final_twice_is_a_duplicate_unless_a_restart_lies_between() {
    let mut o = observer_with(&[command("a", true, "random"), command("b", true, "random")]);
    for (t, id) in [(11.0, "a"), (12.0, "a"), (11.0, "b"), (30.0, "b")] {
        let payload = format!(r#"{{"id":"{id}","state":"ok"}}"#);
        o.on_message(t, TASK, payload.as_bytes(), false);
    }
    let broker = [BrokerRestart {
        killed_at: 20.0,
        ..Default::default()
    }];
    let c = classify_observed(&o, &broker, &[]);
    assert_eq!(c.duplicates, ["a"]);
    assert_eq!(c.replays_after_restart, 1);
    assert_eq!((c.acked, c.with_final, c.by_state["ok"]), (2, 2, 2));
}

#[test]
fn two_different_finals_conflict_even_when_one_is_a_retained_copy() {
    let mut o = observer_with(&[command("a", true, "random")]);
    o.on_message(11.0, TASK, br#"{"id":"a","state":"ok"}"#, false);
    o.on_message(
        40.0,
        TASK,
        br#"{"id":"a","state":"rejected","error":"retained"}"#,
        true,
    );
    let c = classify_observed(&o, &[], &[]);
    assert_eq!(c.conflicting, ["a"]);
    assert!(c.duplicates.is_empty());
}

#[test]
fn a_missing_result_is_explained_only_by_a_probe_a_crash_a_hang_or_the_bridge_restart() {
    let mut crash = command("crash", true, "random");
    crash.sent_at = 19.8;
    let mut hung = command("hung", true, "hang");
    hung.upid = Some("UPID:hung".into());
    hung.states.push(Seen {
        t: 11.0,
        value: "running".into(),
        retain: false,
    });
    let mut restart = command("restart", true, "random");
    restart.sent_at = 45.0;
    restart.states.push(Seen {
        t: 46.0,
        value: "running".into(),
        retain: false,
    });
    let mut lost = command("lost", true, "random");
    lost.sent_at = 100.0;
    let commands = [
        command("probe", true, PROBE),
        crash,
        hung,
        restart,
        lost,
        command("nack", false, "random"),
    ];
    let broker = [BrokerRestart {
        killed_at: 20.0,
        ..Default::default()
    }];
    let bridge = [BridgeRestart {
        sigterm_at: 50.0,
        ..Default::default()
    }];
    let hung_upids = BTreeSet::from(["UPID:hung".to_string()]);
    let c = classify(commands.iter(), &broker, &bridge, &hung_upids);
    let ids = |v: &[String]| {
        v.iter()
            .map(|e| e.split(' ').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&c.missing_probe), ["probe"]);
    assert_eq!(ids(&c.missing_broker_crash), ["crash"]);
    assert_eq!(ids(&c.missing_hung), ["hung"]);
    assert_eq!(ids(&c.missing_bridge_restart), ["restart"]);
    assert_eq!(ids(&c.missing_unexplained), ["lost"]);
    assert_eq!((c.sent, c.acked, c.not_acked, c.probes), (6, 5, 1, 1));
    assert_eq!(c.fault_commands["hang -> (no final)"], 1);
}

#[test]
fn a_copy_delivered_while_the_broker_shuts_down_counts_as_before_the_restart() {
    let mut o = observer_with(&[command("a", true, "random")]);
    o.on_message(39.76, TASK, br#"{"id":"a","state":"ok"}"#, false);
    o.on_message(42.86, TASK, br#"{"id":"a","state":"ok"}"#, false);
    let broker = [BrokerRestart {
        killed_at: 39.74,
        up_at: Some(40.95),
        ..Default::default()
    }];
    let c = classify_observed(&o, &broker, &[]);
    assert!(c.duplicates.is_empty());
    assert_eq!(c.replays_after_restart, 1);
}
