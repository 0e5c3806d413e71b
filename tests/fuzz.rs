//! Property-based fuzzing of everything that parses untrusted input: MQTT command
//! payloads (anyone on the broker can publish them) and Proxmox responses (a newer or
//! odd Proxmox may send anything). The property: no panic, and every rejection has a
//! reason. Run longer with `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use proptest::prelude::*;
use pve2mqtt::command::parse::{parse, MAX_PAYLOAD};
use pve2mqtt::ha::topics::{discovery_id, topic_segment, Topics};
use pve2mqtt::pve::{
    decode_cluster_resources, for_each_cluster_resource, ClusterStatusRow, GuestKind, GuestStatus,
    NodeStatus, Resource, StorageItem, TaskStatus, Upid,
};

/// Arbitrary JSON, biased towards the shapes Proxmox sends (objects of scalars).
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or_default()),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("0"),
            Just("1"),
            Just("1.5"),
            Just("running"),
            Just("qemu"),
            Just("-3")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("vmid".to_string()),
                    Just("type".to_string()),
                    Just("status".to_string()),
                    Just("cpu".to_string()),
                    Just("mem".to_string()),
                    Just("loadavg".to_string()),
                    Just("template".to_string()),
                    Just("tags".to_string()),
                    Just("action".to_string()),
                    Just("timeout".to_string()),
                    Just("id".to_string()),
                    Just("memory".to_string()),
                    Just("exitstatus".to_string()),
                    "[a-z_-]{1,8}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn decode_all(bytes: &[u8]) {
    let _ = serde_json::from_slice::<Vec<Resource>>(bytes);
    let _ = serde_json::from_slice::<Vec<ClusterStatusRow>>(bytes);
    let _ = serde_json::from_slice::<NodeStatus>(bytes);
    let _ = serde_json::from_slice::<GuestStatus>(bytes);
    let _ = serde_json::from_slice::<Vec<StorageItem>>(bytes);
    let _ = serde_json::from_slice::<TaskStatus>(bytes);
    streamed_rows_agree(bytes);
}

/// The fast lane decodes `/cluster/resources` row by row; whatever the input, that gives
/// the rows the whole-list decoder gives, or fails where it fails, with its error.
fn streamed_rows_agree(bytes: &[u8]) {
    let mut streamed = Vec::new();
    let outcome = for_each_cluster_resource(bytes, |row| streamed.push(row));
    match decode_cluster_resources(bytes) {
        Ok(rows) => {
            assert_eq!(outcome.ok(), Some(rows.len()));
            assert_eq!(streamed, rows);
        }
        Err(err) => assert_eq!(outcome.unwrap_err().to_string(), err.to_string()),
    }
}

proptest! {
    #[test]
    fn command_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        for kind in [GuestKind::Qemu, GuestKind::Lxc] {
            if let Err((_, rejection)) = parse(&bytes, kind) {
                prop_assert!(!rejection.reason.is_empty());
            }
        }
    }

    #[test]
    fn command_parser_never_panics_on_json(value in json()) {
        let text = value.to_string();
        for kind in [GuestKind::Qemu, GuestKind::Lxc] {
            match parse(text.as_bytes(), kind) {
                Ok(command) => prop_assert!(command.action.valid_for(kind)),
                Err((_, rejection)) => prop_assert!(!rejection.reason.is_empty()),
            }
        }
        prop_assert!(text.len() <= MAX_PAYLOAD || parse(text.as_bytes(), GuestKind::Qemu).is_err());
    }

    #[test]
    fn proxmox_decoders_never_panic(value in json()) {
        decode_all(value.to_string().as_bytes());
        let rows = serde_json::Value::Array(vec![value]);
        decode_all(rows.to_string().as_bytes());
        let answer = serde_json::json!({ "data": rows });
        decode_all(answer.to_string().as_bytes());
    }

    #[test]
    fn proxmox_decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        decode_all(&bytes);
    }

    #[test]
    fn upid_parser_never_panics_and_round_trips(text in "UPID:[a-z0-9:-]{0,40}[A-F0-9:]{0,30}[a-z@!:]{0,12}|.{0,60}") {
        if let Ok(upid) = text.parse::<Upid>() {
            prop_assert_eq!(upid.to_string(), text);
        }
    }

    #[test]
    fn hostile_names_never_reach_a_topic_or_a_discovery_id(name in ".{0,24}") {
        let segment = topic_segment(&name);
        prop_assert!(!segment.is_empty());
        prop_assert!(!segment.contains(['/', '+', '#']));
        prop_assert!(!segment.chars().any(char::is_control));
        let id = discovery_id(&name);
        prop_assert!(!id.is_empty());
        prop_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let topics = Topics::new("pve2mqtt", "homeassistant");
        let object = pve2mqtt::ha::topics::ObjectRef::Storage(name.clone(), name.clone());
        let state = topics.state(&name, &object);
        prop_assert_eq!(state.split('/').count(), 5);
    }
}
