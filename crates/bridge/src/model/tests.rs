use super::node::short_pve_version;
use super::*;
use crate::pve::Resource;

/// The view a first poll builds from `rows`: no slow-lane data, no earlier samples.
pub(crate) fn first_view(id: &str, console_url: &str, rows: &[Resource]) -> ClusterView {
    build_view(
        id,
        console_url,
        rows,
        &SlowData::default(),
        &mut RateMemory::default(),
        0.0,
        None,
    )
}

fn resources(json: &str) -> Vec<Resource> {
    let envelope: serde_json::Value = serde_json::from_str(json).unwrap();
    serde_json::from_value(envelope["data"].clone()).unwrap()
}

const ONE_NODE: &str = include_str!(
    "../../../../tests/fixtures/pve/cluster_resources.1node-lxc-qemu-storage-sdn.json"
);
const FOUR_NODES: &str =
    include_str!("../../../../tests/fixtures/pve/cluster_resources.4node-qemu-node-storage.json");

#[test]
fn a_recorded_cluster_becomes_nodes_guests_and_storages() {
    let rows = resources(ONE_NODE);
    let view = first_view("home", "https://pve:8006", &rows);
    assert_eq!(view.nodes.len(), 1);
    assert_eq!(view.guests.len(), 3);
    assert_eq!(view.storages.len(), 3, "sdn rows are not storages");
    let jellyfin = &view.guests[&100];
    assert_eq!(jellyfin.kind, GuestKind::Lxc);
    assert_eq!(jellyfin.name.as_deref(), Some("Jellyfin"));
    assert_eq!(jellyfin.cpu, Some(5.4), "0.0544 of the CPUs = 5.4 %");
    assert_eq!(jellyfin.mem_percent, Some(41.8), "5389254656 / 12884901888");
    assert_eq!(jellyfin.cpus, Some(8));
    let ubuntu = &view.guests[&101];
    assert_eq!(&*ubuntu.status, "stopped");
    assert_eq!(
        ubuntu.netin_rate,
        Some(0.0),
        "a stopped guest moves nothing"
    );
    let dsm = &view.storages[&("pve".to_string(), "DSM".to_string())];
    assert!(dsm.shared && dsm.active);
    assert_eq!(dsm.avail, Some(9909187887104 - 1250082226176));
    assert_eq!(dsm.used_percent, Some(12.6));
    assert_eq!(dsm.content.len(), 6);
    assert_eq!(view.cluster.guests_running, 2);
    assert_eq!(view.cluster.nodes_online, 1);
}

#[test]
fn four_node_fixture_counts_and_template_flag() {
    let rows = resources(FOUR_NODES);
    let view = first_view("c", "", &rows);
    assert_eq!(view.nodes.len(), 4);
    assert!(view.guests[&101].template, "template: 1 is a boolean");
    assert!(!view.guests[&100].template);
    assert_eq!(&*view.guests[&100].node, "node2");
}

fn guest_row(netin: u64, status: &str) -> Resource {
    serde_json::from_value(serde_json::json!({
        "id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": status,
        "netin": netin, "netout": 0, "diskread": 0, "diskwrite": 0, "cpu": 0.01, "maxcpu": 2,
    }))
    .unwrap()
}

#[test]
fn rates_come_from_counter_deltas_and_survive_resets() {
    let slow = SlowData::default();
    let mut mem = RateMemory::default();
    let rate = |mem: &mut RateMemory, netin, t| {
        build_view("c", "", &[guest_row(netin, "running")], &slow, mem, t, None).guests[&100]
            .netin_rate
    };
    assert_eq!(
        rate(&mut mem, 1_000, 0.0),
        None,
        "no rate from a single sample"
    );
    assert_eq!(rate(&mut mem, 21_000, 10.0), Some(2_000.0));
    // Proxmox refreshes counters every ~10 s: a repeat keeps the last rate.
    assert_eq!(rate(&mut mem, 21_000, 12.0), Some(2_000.0));
    // A restarted guest's counter starts again from 0: no negative or huge rate.
    assert_eq!(rate(&mut mem, 500, 20.0), None);
    assert_eq!(rate(&mut mem, 1_500, 30.0), Some(100.0));
}

#[test]
fn unchanged_guests_are_shared_with_the_previous_view_and_changed_ones_are_not() {
    let slow = SlowData::default();
    let mut mem = RateMemory::default();
    let rows = resources(ONE_NODE);
    let first = build_view("c", "", &rows, &slow, &mut mem, 0.0, None);
    let again = build_view("c", "", &rows, &slow, &mut mem, 10.0, Some(&first));
    for (vmid, guest) in &again.guests {
        assert!(
            Arc::ptr_eq(guest, &first.guests[vmid]),
            "guest {vmid} copied"
        );
        assert!(again.same_state(&first, &ObjectRef::Guest(guest.kind, *vmid)));
    }
    let mut moved = rows.clone();
    let row = moved.iter_mut().find(|r| r.vmid == Some(101)).unwrap();
    row.status = Some("running".into());
    let changed = build_view("c", "", &moved, &slow, &mut mem, 20.0, Some(&again));
    assert_eq!(&*changed.guests[&101].status, "running");
    assert!(!changed.same_state(&again, &ObjectRef::Guest(GuestKind::Qemu, 101)));
    assert!(Arc::ptr_eq(&changed.guests[&100], &again.guests[&100]));

    // Text and slow-lane inputs count too: new tags, a new backup.
    let row = moved.iter_mut().find(|r| r.vmid == Some(100)).unwrap();
    row.tags_raw = Some("media;new".into());
    let backed_up = SlowData::with_backup(102, 1_764_679_463);
    let later = build_view("c", "", &moved, &backed_up, &mut mem, 30.0, Some(&changed));
    assert_eq!(*later.guests[&100].tags, ["media", "new"]);
    assert_eq!(later.guests[&102].backup.last_backup, Some(1_764_679_463));
    assert!(!Arc::ptr_eq(&later.guests[&102], &changed.guests[&102]));
    assert!(Arc::ptr_eq(&later.guests[&101], &changed.guests[&101]));
}

#[test]
fn new_guest_states_of_one_view_share_their_node_status_and_tag_list() {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running", "name": "a", "tags": "web;prod", "pool": "p"},
        {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "pve", "status": "running", "name": "b", "tags": "web;prod", "pool": "p"},
        {"id": "lxc/102", "type": "lxc", "vmid": 102, "node": "pve", "status": "stopped", "name": "c", "tags": "db"}
    ]))
    .unwrap();
    let view = first_view("c", "", &rows);
    let [a, b, c] = [100, 101, 102].map(|vmid| view.guests[&vmid].clone());
    // One copy of each text for the whole view, not one per guest.
    assert!(Arc::ptr_eq(&a.node, &b.node) && Arc::ptr_eq(&a.node, &c.node));
    assert!(Arc::ptr_eq(&a.status, &b.status));
    assert!(Arc::ptr_eq(&a.tags, &b.tags));
    assert!(Arc::ptr_eq(
        a.pool.as_ref().unwrap(),
        b.pool.as_ref().unwrap()
    ));
    // Equal texts only: each guest still says what its row says.
    assert_eq!((&*c.status, &*c.tags), ("stopped", &["db".to_string()][..]));
    assert_eq!(*a.tags, ["web", "prod"]);
    assert!(!Arc::ptr_eq(
        &a.name.clone().unwrap(),
        &b.name.clone().unwrap()
    ));
}

#[test]
fn a_guests_last_backup_is_the_time_of_its_newest_backup() {
    let mut slow = SlowData::with_backup(100, 1_000);
    slow.set_backup(101, 2_000);
    assert_eq!(
        [100, 101, 102].map(|vmid| slow.last_backup(vmid)),
        [Some(1_000), Some(2_000), None]
    );
    // What a guest's state says (the view reads the same map).
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "pve", "status": "running"}
    ]))
    .unwrap();
    let view = build_view("c", "", &rows, &slow, &mut RateMemory::default(), 0.0, None);
    assert_eq!(view.guests[&101].backup.last_backup, Some(2_000));
}

#[test]
fn node_versions_read_like_users_say_them() {
    assert_eq!(
        short_pve_version("pve-manager/9.1.2/9d436f37a0ac4172"),
        "9.1.2"
    );
    assert_eq!(short_pve_version("9.1.2"), "9.1.2");
}

#[test]
fn rounding_keeps_idle_jitter_from_changing_the_payload() {
    assert_eq!(round_percent(3.04159), 3.0);
    assert_eq!(round_percent(3.1449), 3.1);
    assert_eq!(round_rate(12_345.0), 12_000.0);
    assert_eq!(round_rate(12_449.0), 12_000.0);
    assert_eq!(round_rate(987.0), 990.0);
    assert_eq!(round_rate(42.4), 42.0);
    assert_eq!(round_rate(-1.0), 0.0);
    assert_eq!(round_rate(f64::NAN), 0.0);
}

#[test]
fn objects_on_an_offline_node_are_unavailable() {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "node/a", "type": "node", "node": "a", "status": "online"},
        {"id": "node/b", "type": "node", "node": "b", "status": "offline"},
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "a", "status": "running"},
        {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "b", "status": "unknown"},
        {"id": "storage/b/local", "type": "storage", "node": "b", "storage": "local", "status": "unknown"}
    ]))
    .unwrap();
    let view = first_view("c", "", &rows);
    assert!(view.is_available(&ObjectRef::Guest(GuestKind::Qemu, 100)));
    assert!(!view.is_available(&ObjectRef::Guest(GuestKind::Qemu, 101)));
    assert!(!view.is_available(&ObjectRef::Node("b".into())));
    assert!(!view.is_available(&ObjectRef::Storage("b".into(), "local".into())));
    assert!(view.is_available(&ObjectRef::Cluster));
    assert_eq!(&*view.guests[&101].status, "unknown");
    assert_eq!(
        view.guests[&101].name, None,
        "bare rows of an offline node have no name"
    );
}

#[test]
fn hibernated_vm_is_suspended_and_slow_lane_fills_backups() {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "a", "status": "stopped", "lock": "suspended", "tags": "a;b"}
    ]))
    .unwrap();
    let slow = SlowData::with_backup(100, 1_764_679_463);
    let view = build_view("c", "", &rows, &slow, &mut RateMemory::default(), 0.0, None);
    let vm = &view.guests[&100];
    assert_eq!(&*vm.status, "suspended");
    assert_eq!(vm.backup.last_backup, Some(1_764_679_463));
    assert_eq!(*vm.tags, ["a", "b"]);
}

/// One running guest, a node and a storage with the given figures.
fn moving_rows(cpu: f64, netin: u64, uptime: u64, storage_used: u64) -> Vec<Resource> {
    serde_json::from_value(serde_json::json!([
        {"id": "node/pve", "type": "node", "node": "pve", "status": "online", "cpu": cpu,
         "maxcpu": 8, "mem": 1_000_000_000u64, "maxmem": 8_000_000_000u64, "uptime": uptime},
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running",
         "cpu": cpu, "maxcpu": 2, "mem": 1_000_000_000u64, "maxmem": 4_000_000_000u64,
         "netin": netin, "netout": 0, "diskread": 0, "diskwrite": 0, "uptime": uptime},
        {"id": "storage/pve/local", "type": "storage", "node": "pve", "storage": "local",
         "status": "available", "disk": storage_used, "maxdisk": 100_000_000_000u64}
    ]))
    .unwrap()
}

const T0: f64 = 1_765_000_000.0;

#[test]
fn sub_threshold_moves_keep_the_reported_state_and_bigger_ones_replace_it() {
    let (slow, mut mem) = (SlowData::default(), RateMemory::default());
    let build = |mem: &mut RateMemory, rows: &[Resource], t: f64, prev: Option<&ClusterView>| {
        build_view("c", "", rows, &slow, mem, t, prev)
    };
    let first = build(
        &mut mem,
        &moving_rows(0.05, 1_000, 1_000, 50_000_000_000),
        T0,
        None,
    );
    let guest = ObjectRef::Guest(GuestKind::Qemu, 100);
    let node = ObjectRef::Node("pve".into());
    let storage = ObjectRef::Storage("pve".into(), "local".into());
    // Counters and uptime move, cpu by 1.5 points, storage by 0.4 %: nothing to report.
    // (The first counter move turns the rates from null into numbers: that counts.)
    let rated = build(
        &mut mem,
        &moving_rows(0.05, 2_000, 1_010, 50_000_000_000),
        T0 + 10.0,
        Some(&first),
    );
    assert!(
        !rated.same_state(&first, &guest),
        "null rates became numbers"
    );
    let quiet = build(
        &mut mem,
        &moving_rows(0.065, 3_000, 1_020, 50_400_000_000),
        T0 + 20.0,
        Some(&rated),
    );
    for object in [&guest, &node, &storage] {
        assert!(quiet.same_state(&rated, object), "{object} reported again");
    }
    assert!(Arc::ptr_eq(&quiet.guests[&100], &rated.guests[&100]));
    assert_eq!(
        quiet.guests[&100].netin,
        Some(2_000),
        "counters ride along, stale"
    );
    assert_eq!(quiet.guests[&100].uptime, Some(1_010));
    // Measured against the state reported, not the last poll: drift adds up.
    let drifted = build(
        &mut mem,
        &moving_rows(0.072, 4_000, 1_030, 50_600_000_000),
        T0 + 30.0,
        Some(&quiet),
    );
    for object in [&guest, &node, &storage] {
        assert!(!drifted.same_state(&quiet, object), "{object} not reported");
    }
    let vm = &drifted.guests[&100];
    assert_eq!(
        (vm.cpu.get(), vm.netin.get(), vm.uptime.get()),
        (Some(7.2), Some(4_000), Some(1_030))
    );
    assert_eq!(
        drifted.storages[&("pve".into(), "local".into())].used,
        Some(50_600_000_000)
    );
}

#[test]
fn every_state_is_reported_again_within_max_interval_on_its_own_slot() {
    let (slow, mut mem) = (SlowData::default(), RateMemory::default());
    let rows = moving_rows(0.05, 1_000, 1_000, 50_000_000_000);
    let mut previous = build_view("c", "", &rows, &slow, &mut mem, T0, None);
    let guest = ObjectRef::Guest(GuestKind::Qemu, 100);
    let mut refreshed_at = Vec::new();
    // Polls every 10 s for 20 minutes of an idle world: each object is refreshed (a new
    // state, equal in every published field) once per 5 minutes, at most.
    for i in 1..=120 {
        let t = T0 + 10.0 * i as f64;
        let rows = moving_rows(0.05, 1_000, 1_000 + 10 * i, 50_000_000_000);
        let view = build_view("c", "", &rows, &slow, &mut mem, t, Some(&previous));
        if !view.same_state(&previous, &guest) {
            assert_eq!(&*view.guests[&100].status, "running");
            refreshed_at.push(t - T0);
        }
        previous = view;
    }
    assert!((4..=5).contains(&refreshed_at.len()), "{refreshed_at:?}");
    let mut last = 0.0;
    for at in refreshed_at {
        assert!(
            at - last <= 300.0 + 10.0 && at - last >= 150.0,
            "{at} after {last}"
        );
        last = at;
    }
}

#[test]
fn uptime_does_not_change_the_reported_state_but_started_is_there() {
    let (slow, mut mem) = (SlowData::default(), RateMemory::default());
    let first = build_view(
        "c",
        "",
        &moving_rows(0.05, 0, 5_000, 1),
        &slow,
        &mut mem,
        T0,
        None,
    );
    let started = first.guests[&100].started.get().unwrap();
    assert!((started as f64 - (T0 - 5_000.0)).abs() <= 30.0);
    assert_eq!(first.nodes["pve"].started, Some(started));
    let later = build_view(
        "c",
        "",
        &moving_rows(0.05, 0, 5_060, 1),
        &slow,
        &mut mem,
        T0 + 61.0,
        Some(&first),
    );
    assert!(Arc::ptr_eq(&later.guests[&100], &first.guests[&100]));
    assert!(later.same_state(&first, &ObjectRef::Node("pve".into())));
    let json = serde_json::to_value(&*later.guests[&100]).unwrap();
    assert_eq!(json["started"], started);
    assert!(json.get("as_of").is_none(), "bookkeeping is not published");
    // A reboot: uptime restarts, `started` moves, and that is reported.
    let rebooted = build_view(
        "c",
        "",
        &moving_rows(0.05, 0, 30, 1),
        &slow,
        &mut mem,
        T0 + 120.0,
        Some(&later),
    );
    assert!(rebooted.guests[&100].started.get().unwrap() > started + 4_000);
    assert!(!rebooted.same_state(&later, &ObjectRef::Node("pve".into())));
}

/// A running VM with texts, at `cpu`, and what the slow and agent lanes say of it: a
/// backup at `backup_at` and the agent's address `ip`.
fn lane_view(
    cpu: f64,
    (backup_at, ip): (u64, &str),
    t: f64,
    previous: Option<&ClusterView>,
) -> ClusterView {
    let rows: Vec<Resource> = serde_json::from_value(serde_json::json!([
        {"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "pve", "status": "running",
         "name": "web", "tags": "a;b", "pool": "prod", "cpu": cpu, "maxcpu": 2, "uptime": 1_000}
    ]))
    .unwrap();
    let slow = SlowData::with_backup(100, backup_at);
    let agent = AgentData::from([(
        100,
        AgentInfo {
            responding: Some(true),
            ip_addresses: vec![ip.to_string()],
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            disk_used: None,
        },
    )]);
    let mut rates = RateMemory::default();
    let mut builder = ViewBuilder::new("c", "", &slow, &mut rates, t, previous).agent(&agent);
    for row in &rows {
        builder.add(row);
    }
    builder.finish()
}

#[test]
fn a_guest_whose_figures_moved_gets_a_new_state_sharing_its_texts_and_lane_fields() {
    let lanes = (1_764_679_463, "192.0.2.10");
    let first = lane_view(0.05, lanes, T0, None);
    let moved = lane_view(0.50, lanes, T0 + 10.0, Some(&first));
    let (was, now) = (&first.guests[&100], &moved.guests[&100]);
    assert!(
        !Arc::ptr_eq(was, now),
        "cpu moved by 45 points: a new state"
    );
    assert_eq!(now.cpu, Some(50.0));
    assert!(Arc::ptr_eq(&was.backup, &now.backup));
    assert!(Arc::ptr_eq(&was.lanes, &now.lanes));
    assert!(Arc::ptr_eq(&was.node, &now.node));
    assert!(Arc::ptr_eq(&was.status, &now.status));
    assert!(Arc::ptr_eq(&was.tags, &now.tags));
    assert!(Arc::ptr_eq(
        was.name.as_ref().unwrap(),
        now.name.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        was.pool.as_ref().unwrap(),
        now.pool.as_ref().unwrap()
    ));
    let json = serde_json::to_value(&**now).unwrap();
    assert_eq!(
        (&json["node"], &json["name"], &json["tags"], &json["pool"]),
        (
            &serde_json::json!("pve"),
            &serde_json::json!("web"),
            &serde_json::json!(["a", "b"]),
            &serde_json::json!("prod")
        )
    );
}

#[test]
fn a_lane_change_gives_the_new_state_new_lane_fields_and_keeps_the_others_shared() {
    let first = lane_view(0.05, (1_764_679_463, "192.0.2.10"), T0, None);
    let backed_up = lane_view(0.05, (1_764_700_000, "192.0.2.10"), T0 + 10.0, Some(&first));
    let (was, now) = (&first.guests[&100], &backed_up.guests[&100]);
    assert!(!Arc::ptr_eq(was, now), "a new backup is reported");
    assert!(!Arc::ptr_eq(&was.backup, &now.backup));
    assert_eq!(now.backup.last_backup, Some(1_764_700_000));
    assert!(
        Arc::ptr_eq(&was.lanes, &now.lanes),
        "the agent said the same"
    );
    assert!(Arc::ptr_eq(&was.node, &now.node));
    let readdressed = lane_view(
        0.05,
        (1_764_700_000, "192.0.2.99"),
        T0 + 20.0,
        Some(&backed_up),
    );
    let (was, now) = (now, &readdressed.guests[&100]);
    assert!(!Arc::ptr_eq(&was.lanes, &now.lanes));
    assert_eq!(now.lanes.ip_addresses, ["192.0.2.99"]);
    assert!(Arc::ptr_eq(&was.backup, &now.backup));
}
