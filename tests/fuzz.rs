//! Property-based fuzzing of everything that parses untrusted input: MQTT command
//! payloads (anyone on the broker can publish them) and Proxmox responses (a newer or
//! odd Proxmox may send anything). The property: no panic, and every rejection has a
//! reason. Run longer with `PROPTEST_CASES=100000 cargo test --release --test fuzz`.

use proptest::prelude::*;
use pve2mqtt::command::parse::{parse, MAX_PAYLOAD};
use pve2mqtt::ha::topics::{discovery_id, topic_segment, Topics};
use pve2mqtt::pve::{
    decode_cluster_resources, for_each_cluster_resource, ClusterStatusRow, GuestKind, GuestRow,
    GuestStatus, NodeStatus, RawRow, Resource, StorageItem, TaskStatus, Upid,
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

/// A guest row's JSON text, field by field: Proxmox's keys in any order with values of
/// their kind most of the time, and now and then what a Perl scalar, an odd release or
/// a broken proxy sends (other forms, escapes, nesting, duplicates, unknown keys).
fn guest_row_text() -> impl Strategy<Value = String> {
    const TEXTS: [&str; 11] = [
        "type", "node", "name", "status", "tags", "lock", "hastate", "pool", "id", "storage",
        "level",
    ];
    const NUMBERS: [&str; 15] = [
        "vmid",
        "cpu",
        "maxcpu",
        "mem",
        "maxmem",
        "disk",
        "maxdisk",
        "netin",
        "netout",
        "diskread",
        "diskwrite",
        "uptime",
        "template",
        "shared",
        "memhost",
    ];
    let text = prop_oneof![
        Just("\"qemu\"".to_owned()),
        Just("\"lxc\"".to_owned()),
        Just("null".to_owned()),
        "[a-z0-9;._-]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ];
    let number = prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u32..100_000).prop_map(|n| format!("0.{n}")),
        Just("0".to_owned()),
        Just("1".to_owned()),
    ];
    let odd = prop_oneof![
        Just("null"),
        Just("true"),
        Just("false"),
        Just("-1"),
        Just("1.5e3"),
        Just("2.0"),
        Just("01"),
        Just("1."),
        Just("\"103\""),
        Just("\"0.25\""),
        Just("\"a\\\"b\""),
        Just("\"\\u00e9\""),
        Just("{}"),
        Just("[1]"),
        Just("\"\t\""),
        Just("18446744073709551616"),
        Just("4294967296"),
        Just("-0"),
        Just("1e400"),
        Just("12x"),
        Just("\"\""),
        Just("7"),
    ]
    .prop_map(str::to_owned);
    let keys: Vec<&str> = TEXTS.iter().chain(NUMBERS.iter()).copied().collect();
    let fields = prop::sample::subsequence(keys, 0..=26)
        .prop_shuffle()
        .prop_flat_map(move |keys| {
            let values: Vec<BoxedStrategy<String>> = keys
                .iter()
                .map(|k| {
                    let kind = if TEXTS.contains(k) {
                        text.clone().boxed()
                    } else {
                        number.clone().boxed()
                    };
                    prop_oneof![9 => kind, 1 => odd.clone()].boxed()
                })
                .collect();
            (Just(keys), values)
        });
    let extra_key = prop_oneof![
        Just("\"vmid\""),
        Just("\"cpu\""),
        Just("\"shared\""),
        Just("\"c\\u0070u\""),
        Just("\"x\""),
        Just("vmid"),
    ];
    let extra = prop::collection::vec((extra_key, odd_or_plain()), 0..2);
    let space = prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n ")];
    (fields, extra, space, any::<bool>()).prop_map(|((keys, values), extra, space, guest)| {
        let mut pairs: Vec<String> = Vec::new();
        if guest {
            pairs.push("\"type\":\"qemu\",\"vmid\":100,\"node\":\"pve\"".to_owned());
        }
        for (key, value) in keys.iter().zip(values) {
            if !(guest && ["type", "vmid", "node"].contains(key)) {
                pairs.push(format!("{space}\"{key}\"{space}:{space}{value}"));
            }
        }
        for (key, value) in extra {
            pairs.push(format!("{key}:{value}"));
        }
        format!("{space}{{{}}}{space}", pairs.join(","))
    })
}

fn odd_or_plain() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1"),
        Just("\"a\""),
        Just("null"),
        Just("{}"),
        Just("0.5")
    ]
    .prop_map(str::to_owned)
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

    /// The fast lane reads guest rows with its own scan (`RawRow::scan_guest`); whatever
    /// the row, a row it reads is one serde decodes, to the same guest.
    #[test]
    fn a_guest_row_the_scan_reads_is_the_row_serde_decodes(text in guest_row_text()) {
        if let Some(scanned) = RawRow::new(&text).scan_guest() {
            let decoded = serde_json::from_str::<Resource>(&text);
            prop_assert!(decoded.is_ok(), "scanned, serde fails: {}", text);
            prop_assert_eq!(GuestRow::of(decoded.as_ref().unwrap()), Some(scanned), "{}", text);
        }
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
