//! The world as the Proxmox API shows it: every row and object with real field names,
//! real typing (0/1 booleans, `loadavg` as strings, integer vmids, explicit nulls) and the
//! extra fields the schema omits (`memhost`, `pressure*`, `cgroup-mode`, `blockstat`, …).
//!
//! Rows are filtered by the token's privileges the way the real handlers filter them.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::access::{split_token_user, Token};
use super::rows::FlatRow;
use super::tasks::Task;
use super::world::{Guest, GuestType, Node, PowerState, PveVersion, Storage, World};

type Row = Map<String, Value>;

/// Proxmox booleans are integers.
fn flag(value: bool) -> Value {
    Value::from(u8::from(value))
}

fn put(row: &mut Row, key: &str, value: impl Into<Value>) {
    row.insert(key.to_string(), value.into());
}

fn put_opt(row: &mut Row, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        row.insert(key.to_string(), Value::from(value));
    }
}

/// A short stable hex digest of `text` (repoids, config digests).
fn short_digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The short git revision `/version` reports; stable per version.
pub fn repoid(version: PveVersion) -> String {
    short_digest(&version.to_string())
}

pub fn version(version: PveVersion) -> Value {
    json!({
        "version": version.to_string(),
        "release": version.release(),
        "repoid": repoid(version),
    })
}

fn qemu_versions(version: PveVersion) -> (&'static str, &'static str) {
    match version.major {
        0..=7 => ("8.1.5", "pc-i440fx-8.1+pve0"),
        8 => ("9.2.0", "pc-i440fx-9.2+pve1"),
        _ => ("10.1.2", "pc-i440fx-10.1+pve0"),
    }
}

/// Small pressure-stall figures for a running guest.
fn pressure(guest: &Guest, t: f64) -> [f64; 6] {
    let base = guest.load * 2.0;
    let wobble = |offset: f64| ((t / 11.0 + offset + f64::from(guest.vmid)).sin() + 1.0) / 2.0;
    let round = |value: f64| (value * 100.0).round() / 100.0;
    [
        round(base * wobble(0.0)),
        round(base * wobble(1.0) * 0.5),
        round(base * wobble(2.0) * 0.8),
        round(base * wobble(3.0) * 0.6),
        round(base * wobble(4.0) * 0.1),
        round(base * wobble(5.0) * 0.05),
    ]
}

/// The fields shared by the qemu/lxc lists and `status/current`.
fn guest_common(guest: &Guest, t: f64, version: PveVersion) -> Row {
    let metrics = guest.metrics(t);
    let running = guest.power.process_running();
    let mut row = Row::new();
    put(&mut row, "vmid", guest.vmid);
    put(&mut row, "name", guest.name.as_str());
    put(
        &mut row,
        "status",
        if running { "running" } else { "stopped" },
    );
    put(&mut row, "cpus", guest.cpus);
    put(&mut row, "cpu", metrics.cpu);
    put(&mut row, "mem", metrics.mem);
    put(&mut row, "maxmem", guest.maxmem);
    put(&mut row, "maxdisk", guest.maxdisk);
    put(&mut row, "disk", guest.disk_at(t));
    put(&mut row, "diskread", metrics.diskread);
    put(&mut row, "diskwrite", metrics.diskwrite);
    put(&mut row, "netin", metrics.netin);
    put(&mut row, "netout", metrics.netout);
    put(&mut row, "uptime", metrics.uptime);
    if running {
        put(&mut row, "pid", guest.pid);
    }
    if guest.template {
        put(&mut row, "template", 1);
    }
    put_opt(&mut row, "tags", guest.tags.as_deref());
    put_opt(&mut row, "lock", guest.lock.as_deref());
    if version.is_pve9() && running {
        let p = pressure(guest, t);
        match guest.kind {
            GuestType::Qemu => {
                put(&mut row, "memhost", metrics.mem + metrics.mem / 20);
                put(&mut row, "pressurecpusome", p[0]);
                put(&mut row, "pressurecpufull", p[1]);
                put(&mut row, "pressureiosome", p[2]);
                put(&mut row, "pressureiofull", p[3]);
                put(&mut row, "pressurememorysome", p[4]);
                put(&mut row, "pressurememoryfull", p[5]);
            }
            GuestType::Lxc => {
                put(&mut row, "pressurecpusome", p[0]);
                put(&mut row, "pressureiosome", p[2]);
                put(&mut row, "pressureiofull", p[3]);
                put(&mut row, "pressurememorysome", p[4]);
                put(&mut row, "pressurememoryfull", p[5]);
            }
        }
    }
    if guest.kind == GuestType::Lxc {
        put(&mut row, "type", "lxc");
        put(&mut row, "maxswap", 512u64 * 1024 * 1024);
        put(&mut row, "swap", 0);
        if version.lxc_vmid_as_string() {
            put(&mut row, "vmid", guest.vmid.to_string());
        }
    }
    row
}

/// A row of `GET /nodes/{node}/qemu` (`full` adds the QMP details).
pub fn qemu_list_row(guest: &Guest, t: f64, version: PveVersion, full: bool) -> Value {
    let mut row = guest_common(guest, t, version);
    if full && guest.power.process_running() {
        let (qemu, machine) = qemu_versions(version);
        put(&mut row, "qmpstatus", qmpstatus(guest));
        put(&mut row, "running-qemu", qemu);
        put(&mut row, "running-machine", machine);
    }
    Value::Object(row)
}

/// A row of `GET /nodes/{node}/lxc`.
pub fn lxc_list_row(guest: &Guest, t: f64, version: PveVersion) -> Value {
    Value::Object(guest_common(guest, t, version))
}

fn qmpstatus(guest: &Guest) -> &'static str {
    match guest.power {
        PowerState::Running => "running",
        PowerState::Paused => "paused",
        PowerState::Stopped => "stopped",
    }
}

/// The `ha` object of `status/current`.
fn ha_object(guest: &Guest) -> Value {
    match &guest.ha {
        None => json!({"managed": 0}),
        Some(ha) => json!({
            "managed": 1,
            "state": ha.request,
            "max_restart": 1,
            "max_relocate": 1,
        }),
    }
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
pub fn qemu_current(guest: &Guest, t: f64, version: PveVersion) -> Value {
    let mut row = guest_common(guest, t, version);
    let metrics = guest.metrics(t);
    put(&mut row, "ha", ha_object(guest));
    put(&mut row, "qmpstatus", qmpstatus(guest));
    put(&mut row, "agent", 1);
    if guest.power.process_running() {
        let (qemu, machine) = qemu_versions(version);
        let free = guest.maxmem.saturating_sub(metrics.mem);
        put(&mut row, "running-qemu", qemu);
        put(&mut row, "running-machine", machine);
        put(&mut row, "clipboard", Value::Null);
        put(&mut row, "shares", 1000);
        put(&mut row, "balloon", guest.maxmem);
        put(&mut row, "freemem", free);
        put(
            &mut row,
            "ballooninfo",
            json!({
                "actual": guest.maxmem,
                "max_mem": guest.maxmem,
                "total_mem": guest.maxmem - guest.maxmem / 50,
                "free_mem": free,
                "mem_swapped_in": 0,
                "mem_swapped_out": 0,
                "major_page_faults": 1811,
                "minor_page_faults": 3_803_793,
                "last_update": t as u64,
            }),
        );
        put(
            &mut row,
            "blockstat",
            json!({
                "scsi0": {
                    "rd_bytes": metrics.diskread,
                    "wr_bytes": metrics.diskwrite,
                    "rd_operations": metrics.diskread / 40_960,
                    "wr_operations": metrics.diskwrite / 16_384,
                    "flush_operations": metrics.diskwrite / 131_072,
                    "failed_rd_operations": 0,
                    "failed_wr_operations": 0,
                    "invalid_rd_operations": 0,
                    "invalid_wr_operations": 0,
                    "rd_total_time_ns": metrics.diskread / 10,
                    "wr_total_time_ns": metrics.diskwrite / 5,
                    "idle_time_ns": 4_427_685_914u64,
                    "wr_highest_offset": guest.maxdisk / 3,
                    "account_failed": true,
                    "account_invalid": true,
                    "timed_stats": [],
                }
            }),
        );
        let tap = format!("tap{}i0", guest.vmid);
        put(
            &mut row,
            "nics",
            json!({ tap: {"netin": metrics.netin, "netout": metrics.netout} }),
        );
        put(
            &mut row,
            "proxmox-support",
            json!({
                "backup-fleecing": true,
                "backup-max-workers": true,
                "pbs-dirty-bitmap": true,
                "pbs-dirty-bitmap-migration": true,
                "pbs-dirty-bitmap-savevm": true,
                "pbs-library-version": "1.5.2 (UNKNOWN)",
                "pbs-masterkey": true,
                "query-bitmap-info": true,
            }),
        );
    }
    Value::Object(row)
}

/// `GET /nodes/{node}/lxc/{vmid}/status/current`: a list row plus `ha`.
pub fn lxc_current(guest: &Guest, t: f64, version: PveVersion) -> Value {
    let mut row = guest_common(guest, t, version);
    put(&mut row, "ha", ha_object(guest));
    Value::Object(row)
}

/// The row of a guest in `/cluster/resources`.
fn guest_resource<'a>(
    guest: &'a Guest,
    node_online: bool,
    t: f64,
    version: PveVersion,
) -> FlatRow<'a> {
    let mut row = FlatRow::with_capacity(22);
    row.put("id", format!("{}/{}", guest.kind.as_str(), guest.vmid));
    row.put("vmid", guest.vmid);
    row.put("node", guest.node.as_str());
    row.put("type", guest.kind.as_str());
    if node_online {
        let metrics = guest.metrics(t);
        let status = match (guest.kind, guest.power) {
            // pvestatd reports `qmpstatus || status`.
            (GuestType::Qemu, PowerState::Paused) => "paused",
            (_, power) if power.process_running() => "running",
            _ => "stopped",
        };
        row.put("status", status);
        row.put("name", guest.name.as_str());
        row.put("template", u64::from(guest.template));
        row.put("cpu", metrics.cpu);
        row.put("maxcpu", guest.cpus);
        row.put("mem", metrics.mem);
        row.put("maxmem", guest.maxmem);
        row.put("disk", guest.disk_at(t));
        row.put("maxdisk", guest.maxdisk);
        row.put("diskread", metrics.diskread);
        row.put("diskwrite", metrics.diskwrite);
        row.put("netin", metrics.netin);
        row.put("netout", metrics.netout);
        row.put("uptime", metrics.uptime);
        if version.is_pve9() && guest.kind == GuestType::Qemu {
            row.put("memhost", metrics.mem + metrics.mem / 20);
        }
    } else {
        // No broadcast from the node: only what pmxcfs knows.
        row.put("status", "unknown");
    }
    row.put_opt("tags", guest.tags.as_deref());
    row.put_opt("pool", guest.pool.as_deref());
    row.put_opt("lock", guest.lock.as_deref());
    row.put_opt("hastate", guest.ha.as_ref().map(|ha| ha.crm.as_str()));
    row
}

/// Node statistics shared by `/cluster/resources` and `/nodes` rows.
fn node_stats(row: &mut Row, node: &Node, t: f64) {
    put(row, "cpu", node.cpu(t));
    put(row, "maxcpu", node.maxcpu);
    put(row, "mem", node.mem_used(t));
    put(row, "maxmem", node.maxmem);
    put(row, "disk", node.rootfs_used_at(t));
    put(row, "maxdisk", node.rootfs_total);
    put(row, "uptime", node.uptime(t));
}

fn node_resource<'a>(
    node: &'a Node,
    level: &'a str,
    audit: bool,
    t: f64,
    version: PveVersion,
) -> FlatRow<'a> {
    let mut row = FlatRow::with_capacity(14);
    row.put("id", format!("node/{}", node.name));
    row.put("node", node.name.as_str());
    row.put("type", "node");
    row.put("status", if node.online { "online" } else { "offline" });
    row.put("level", level);
    if node.online {
        row.put("cgroup-mode", 2u64);
        if audit {
            row.put("cpu", node.cpu(t));
            row.put("maxcpu", node.maxcpu);
            row.put("mem", node.mem_used(t));
            row.put("maxmem", node.maxmem);
            row.put("disk", node.rootfs_used_at(t));
            row.put("maxdisk", node.rootfs_total);
            row.put("uptime", node.uptime(t));
        }
        if version.node_host_arch() {
            row.put("host-arch", "x86_64");
        }
    }
    row
}

fn storage_resource<'a>(
    world: &World,
    storage: &'a Storage,
    node: &'a Node,
    t: f64,
) -> FlatRow<'a> {
    let mut row = FlatRow::with_capacity(10);
    row.put("id", format!("storage/{}/{}", node.name, storage.id));
    row.put("storage", storage.id.as_str());
    row.put("node", node.name.as_str());
    row.put("type", "storage");
    row.put("plugintype", storage.plugintype.as_str());
    row.put("content", storage.content.as_str());
    row.put("shared", u64::from(storage.shared));
    if node.online {
        row.put("status", "available");
        row.put("disk", world.storage_used(storage, &node.name, t));
        row.put("maxdisk", storage.total);
    } else {
        row.put("status", "unknown");
    }
    row
}

fn network_resource(node: &Node, version: PveVersion) -> FlatRow<'_> {
    let mut row = FlatRow::with_capacity(7);
    row.put("node", node.name.as_str());
    row.put("status", "ok");
    if version.is_pve9() {
        row.put("id", format!("network/{}/zone/localnetwork", node.name));
        row.put("network", "localnetwork");
        row.put("network-type", "zone");
        row.put("zone-type", "simple");
        row.put("type", "network");
    } else {
        row.put("id", format!("sdn/{}/localnetwork", node.name));
        row.put("sdn", "localnetwork");
        row.put("type", "sdn");
    }
    row
}

/// Pool rows, with figures summed over their running members as Proxmox does.
fn pool_resources<'a>(world: &'a World, token: &Token, t: f64) -> Vec<FlatRow<'a>> {
    #[derive(Default)]
    struct Sum {
        busy_cores: f64,
        maxcpu: u64,
        mem: u64,
        maxmem: u64,
        uptime: u64,
        any_running: bool,
    }
    let mut pools: std::collections::BTreeMap<&str, Sum> = std::collections::BTreeMap::new();
    for guest in world.guests.values() {
        let Some(pool) = guest.pool.as_deref() else {
            continue;
        };
        if !token.has(&format!("/pool/{pool}"), "Pool.Audit") {
            continue;
        }
        let sum = pools.entry(pool).or_default();
        if guest.power.process_running() && world.node_online(&guest.node) {
            let metrics = guest.metrics(t);
            sum.any_running = true;
            sum.busy_cores += metrics.cpu * f64::from(guest.cpus);
            sum.maxcpu += u64::from(guest.cpus);
            sum.mem += metrics.mem;
            sum.maxmem += guest.maxmem;
            sum.uptime = sum.uptime.max(metrics.uptime);
        }
    }
    pools
        .into_iter()
        .map(|(pool, sum)| {
            let mut row = FlatRow::with_capacity(8);
            row.put("id", format!("/pool/{pool}"));
            row.put("pool", pool);
            row.put("type", "pool");
            if sum.any_running {
                // `cpu` is a fraction of the pool's `maxcpu`, like every other cpu figure.
                row.put("cpu", sum.busy_cores / sum.maxcpu.max(1) as f64);
                row.put("maxcpu", sum.maxcpu);
                row.put("mem", sum.mem);
                row.put("maxmem", sum.maxmem);
                row.put("uptime", sum.uptime);
            }
            row
        })
        .collect()
}

/// `GET /cluster/resources`, filtered silently by the token's privileges; the guests in
/// another order on every call, as the fields of every row (`FlatRow::write_shuffled`).
pub fn cluster_resources<'a>(
    world: &'a World,
    version: PveVersion,
    token: &Token,
    t: f64,
    filter: Option<&str>,
) -> Vec<FlatRow<'a>> {
    let wants = |kind: &str| filter.is_none_or(|f| f == kind);
    let mut rows = Vec::with_capacity(world.guests.len() + world.nodes.len() * 4);
    if filter.is_none() {
        // Pools come first.
        rows.extend(pool_resources(world, token, t));
    }
    if wants("vm") {
        let first_guest = rows.len();
        let online: std::collections::HashSet<&str> = world
            .nodes
            .iter()
            .filter(|n| n.online)
            .map(|n| n.name.as_str())
            .collect();
        for guest in world.guests.values() {
            if token.unrestricted() || token.has(&format!("/vms/{}", guest.vmid), "VM.Audit") {
                rows.push(guest_resource(
                    guest,
                    online.contains(guest.node.as_str()),
                    t,
                    version,
                ));
            }
        }
        // Proxmox lists the guests in the order of a Perl hash (its vmlist), which
        // differs between its API worker processes: another order from call to call.
        fastrand::shuffle(&mut rows[first_guest..]);
    }
    if wants("node") {
        for node in &world.nodes {
            let audit = token.has(&format!("/nodes/{}", node.name), "Sys.Audit");
            let level = world
                .node_health
                .get(&node.name)
                .map_or("", |h| h.level.as_str());
            rows.push(node_resource(node, level, audit, t, version));
        }
    }
    if wants("storage") {
        for node in &world.nodes {
            for storage in world.storages.iter().filter(|s| s.on_node(&node.name)) {
                if token.has_any(
                    &format!("/storage/{}", storage.id),
                    &["Datastore.Audit", "Datastore.AllocateSpace"],
                ) {
                    rows.push(storage_resource(world, storage, node, t));
                }
            }
        }
    }
    if wants("sdn") && token.has("/sdn/zones/localnetwork", "SDN.Audit") {
        for node in world.nodes.iter().filter(|node| node.online) {
            rows.push(network_resource(node, version));
        }
    }
    rows
}

/// `GET /nodes`
pub fn nodes(world: &World, token: &Token, t: f64) -> Vec<Value> {
    world
        .nodes
        .iter()
        .map(|node| {
            let mut row = Row::new();
            put(&mut row, "id", format!("node/{}", node.name));
            put(&mut row, "node", node.name.as_str());
            put(&mut row, "type", "node");
            put(
                &mut row,
                "status",
                if node.online { "online" } else { "offline" },
            );
            put(&mut row, "level", world.health_of(&node.name).level);
            put(&mut row, "ssl_fingerprint", node.ssl_fingerprint.as_str());
            if node.online && token.has(&format!("/nodes/{}", node.name), "Sys.Audit") {
                node_stats(&mut row, node, t);
            }
            Value::Object(row)
        })
        .collect()
}

/// `GET /cluster/status`
pub fn cluster_status(world: &World) -> Vec<Value> {
    let mut rows = Vec::new();
    if let Some(name) = &world.cluster_name {
        rows.push(json!({
            "type": "cluster",
            "id": "cluster",
            "name": name,
            "nodes": world.nodes.len(),
            "quorate": flag(world.quorate()),
            "version": world.nodes.len() + 2,
        }));
    }
    for (index, node) in world.nodes.iter().enumerate() {
        rows.push(json!({
            "type": "node",
            "id": format!("node/{}", node.name),
            "name": node.name,
            "nodeid": node.nodeid,
            "ip": node.ip,
            "online": flag(node.online),
            "local": flag(index == 0),
            "level": world.health_of(&node.name).level,
        }));
    }
    rows
}

const CPU_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 \
clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc \
arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni \
pclmulqdq dtes64 monitor ds_cpl vmx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 \
x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch \
cpuid_fault epb ssbd ibrs ibpb stibp ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni \
xsaveopt xsavec xgetbv1 xsaves avx_vnni dtherm ida arat pln pts hwp umip pku ospke waitpkg gfni \
vaes vpclmulqdq rdpid movdiri movdir64b fsrm md_clear serialize arch_lbr ibt flush_l1d \
arch_capabilities";

/// `GET /nodes/{node}/status` (shape of the PVE 9.1.2 fixture).
pub fn node_status(node: &Node, version: PveVersion, t: f64) -> Value {
    let used = node.mem_used(t);
    let total = node.maxmem;
    let swap_used = node.swap_total / 9;
    let [one, five, fifteen] = node.loadavg(t);
    let kernel = version.kernel_release();
    let kernel_version = format!(
        "#1 SMP PREEMPT_DYNAMIC PMX {} (2025-12-03T15:42Z)",
        kernel.trim_end_matches("-pve")
    );
    let rootfs_used = node.rootfs_used_at(t);
    let rootfs_free = node.rootfs_total - rootfs_used;
    let mhz = 2400.0 + 500.0 * ((t / 7.0).sin() + 1.0) / 2.0;
    json!({
        "uptime": node.uptime(t),
        "cpu": node.cpu(t),
        "wait": node.cpu(t + 13.0) * 0.02,
        "idle": 0,
        "loadavg": [format!("{one:.2}"), format!("{five:.2}"), format!("{fifteen:.2}")],
        "pveversion": format!("pve-manager/{version}/{}", repoid(version)),
        "kversion": format!("Linux {kernel} {kernel_version}"),
        "current-kernel": {
            "sysname": "Linux",
            "release": kernel,
            "version": kernel_version,
            "machine": "x86_64",
        },
        "boot-info": {"mode": "efi", "secureboot": 0},
        "cpuinfo": {
            "model": node.cpu_model,
            "cpus": node.maxcpu,
            "cores": node.maxcpu / node.sockets.max(1),
            "sockets": node.sockets,
            "mhz": format!("{mhz:.3}"),
            "hvm": "1",
            "user_hz": 100,
            "flags": CPU_FLAGS,
        },
        "memory": {
            "total": total,
            "used": used,
            "free": total - used,
            "available": total - used + total / 20,
        },
        "swap": {
            "total": node.swap_total,
            "used": swap_used,
            "free": node.swap_total - swap_used,
        },
        "ksm": {"shared": 150_302_720},
        "rootfs": {
            "total": node.rootfs_total,
            "used": rootfs_used,
            "free": rootfs_free,
            "avail": rootfs_free - rootfs_free / 16,
        },
    })
}

/// A row of `GET /nodes/{node}/storage`.
pub fn node_storage_row(
    world: &World,
    storage: &Storage,
    node: &str,
    version: PveVersion,
    with_formats: bool,
    t: f64,
) -> Value {
    let used = world.storage_used(storage, node, t);
    let mut row = Row::new();
    put(&mut row, "storage", storage.id.as_str());
    put(&mut row, "type", storage.plugintype.as_str());
    put(&mut row, "content", storage.content.as_str());
    put(&mut row, "active", 1);
    put(&mut row, "enabled", 1);
    put(&mut row, "shared", flag(storage.shared));
    put(&mut row, "total", storage.total);
    put(&mut row, "used", used);
    put(&mut row, "avail", storage.avail(used));
    put(
        &mut row,
        "used_fraction",
        used as f64 / storage.total as f64,
    );
    if with_formats && version.is_pve9() {
        let (default, supported): (&str, &[&str]) = match storage.plugintype.as_str() {
            "lvmthin" | "lvm" | "zfspool" => ("raw", &["raw"]),
            _ => ("qcow2", &["raw", "qcow2", "vmdk"]),
        };
        put(
            &mut row,
            "formats",
            json!({"default": default, "supported": supported}),
        );
        put(&mut row, "select_existing", 0);
    }
    Value::Object(row)
}

/// `GET /nodes/{node}/storage/{storage}/content`, with each volume filtered the way
/// `PVE::Storage::check_volume_access` allows it.
pub fn storage_content(
    world: &World,
    storage: &Storage,
    node: &str,
    token: &Token,
    content: Option<&str>,
    vmid: Option<u32>,
) -> Vec<Value> {
    let storage_path = format!("/storage/{}", storage.id);
    let mut rows = Vec::new();
    if storage.supports("images") || storage.supports("rootdir") {
        for guest in world.guests.values().filter(|g| g.node == node) {
            let kind = match guest.kind {
                GuestType::Lxc if storage.supports("rootdir") => "rootdir",
                _ if storage.supports("images") => "images",
                _ => continue,
            };
            if content.is_some_and(|c| c != kind) || vmid.is_some_and(|v| v != guest.vmid) {
                continue;
            }
            if !(token.has(&storage_path, "Datastore.Audit")
                && token.has(&format!("/vms/{}", guest.vmid), "VM.Config.Disk"))
            {
                continue;
            }
            rows.push(json!({
                "volid": format!("{}:vm-{}-disk-0", storage.id, guest.vmid),
                "content": kind,
                "format": "raw",
                "size": guest.maxdisk,
                "vmid": guest.vmid,
            }));
        }
    }
    for volume in world.volumes_on(storage, node) {
        if content.is_some_and(|c| c != volume.content) {
            continue;
        }
        if vmid.is_some() && volume.vmid != vmid {
            continue;
        }
        let allowed = match (volume.content.as_str(), volume.vmid) {
            ("backup", Some(owner)) => {
                token.has(&storage_path, "Datastore.AllocateSpace")
                    && token.has(&format!("/vms/{owner}"), "VM.Backup")
            }
            ("iso" | "vztmpl", _) => true,
            _ => token.has(&storage_path, "Datastore.Allocate"),
        };
        if !allowed {
            continue;
        }
        let mut row = Row::new();
        put(&mut row, "volid", volume.volid.as_str());
        put(&mut row, "content", volume.content.as_str());
        put(&mut row, "format", volume.format.as_str());
        put(&mut row, "size", volume.size);
        put(&mut row, "ctime", volume.ctime);
        if let Some(owner) = volume.vmid {
            put(&mut row, "vmid", owner);
        }
        if let Some(subtype) = volume.subtype {
            put(&mut row, "subtype", subtype.as_str());
        }
        if let Some(notes) = &volume.notes {
            // Only the first line is listed.
            put(&mut row, "notes", notes.lines().next().unwrap_or(""));
        }
        if volume.protected {
            put(&mut row, "protected", 1);
        }
        if let Some(state) = &volume.verification {
            // The UPID of the PBS verification job that checked it (PBS's own format).
            let upid = format!(
                "UPID:pbs:000004D2:0000ABCD:00000000:{:08X}:verificationjob:{}\\x3av-{:08x}:root@pam:",
                volume.ctime + 3600,
                storage.id,
                volume.ctime
            );
            row.insert("verification".into(), json!({"state": state, "upid": upid}));
        }
        rows.push(Value::Object(row));
    }
    rows
}

/// Adds `user`, and `tokenid` for token tasks, split as Proxmox does.
fn task_user(row: &mut Row, user: &str) {
    let (user, tokenid) = split_token_user(user);
    put(row, "user", user);
    put_opt(row, "tokenid", tokenid);
}

fn task_base(task: &Task) -> Row {
    let mut row = Row::new();
    put(&mut row, "upid", task.upid_text.as_str());
    put(&mut row, "node", task.upid.node.as_str());
    put(&mut row, "pid", task.upid.pid);
    put(&mut row, "pstart", task.upid.pstart);
    put(&mut row, "starttime", task.upid.starttime);
    put(&mut row, "type", task.upid.kind.as_str());
    put(&mut row, "id", task.upid.id.as_str());
    task_user(&mut row, &task.upid.user);
    row
}

/// `GET /nodes/{node}/tasks/{upid}/status`
pub fn task_status(task: &Task, now: f64) -> Value {
    let mut row = task_base(task);
    match task.exitstatus(now) {
        Some(exit) => {
            put(&mut row, "status", "stopped");
            put(&mut row, "exitstatus", exit);
        }
        None => put(&mut row, "status", "running"),
    }
    Value::Object(row)
}

/// A row of the task lists: finished tasks carry their exit text in `status` and `endtime`.
pub fn task_list_row(task: &Task, now: f64) -> Value {
    let mut row = task_base(task);
    if let (Some(exit), Some(end)) = (task.exitstatus(now), task.ended_at(now)) {
        put(&mut row, "status", exit);
        put(
            &mut row,
            "endtime",
            end.max(task.upid.starttime as f64) as u64,
        );
    }
    Value::Object(row)
}

/// `GET /cluster/ha/status/current`
pub fn ha_status(world: &World, version: PveVersion, now: f64) -> Vec<Value> {
    let master = world
        .nodes
        .iter()
        .find(|n| n.online)
        .map_or("", |n| n.name.as_str());
    let mut rows = vec![json!({
        "id": "quorum",
        "type": "quorum",
        "node": master,
        "status": if world.quorate() { "OK".to_string() } else { format!("No quorum on node '{master}'!") },
        "quorate": flag(world.quorate()),
    })];
    let managed: Vec<&Guest> = world.guests.values().filter(|g| g.ha.is_some()).collect();
    if managed.is_empty() {
        return rows;
    }
    let stamp = now as u64;
    rows.push(json!({
        "id": "master",
        "type": "master",
        "node": master,
        "status": format!("{master} (active, {})", super::world::format_time(stamp, '-', ' ', ':')),
        "timestamp": stamp,
    }));
    if version.is_pve9() {
        rows.push(json!({
            "id": "fencing",
            "type": "fencing",
            "node": master,
            "status": "armed",
            "armed-state": "armed",
            "resource_mode": "freeze",
        }));
    }
    for node in &world.nodes {
        let active = managed.iter().any(|g| g.node == node.name);
        rows.push(json!({
            "id": format!("lrm:{}", node.name),
            "type": "lrm",
            "node": node.name,
            "status": if !node.online {
                format!("{} (old timestamp - dead?, {})", node.name, super::world::format_time(stamp - 120, '-', ' ', ':'))
            } else if active {
                format!("{} (active, {})", node.name, super::world::format_time(stamp, '-', ' ', ':'))
            } else {
                format!("{} (idle, {})", node.name, super::world::format_time(stamp, '-', ' ', ':'))
            },
            "timestamp": stamp,
        }));
    }
    for guest in managed {
        let Some(ha) = &guest.ha else { continue };
        let prefix = match guest.kind {
            GuestType::Qemu => "vm",
            GuestType::Lxc => "ct",
        };
        let sid = format!("{prefix}:{}", guest.vmid);
        rows.push(json!({
            "id": format!("service:{sid}"),
            "sid": sid,
            "type": "service",
            "node": guest.node,
            "state": ha.crm,
            "crm_state": ha.crm,
            "request_state": ha.request,
            "max_restart": 1,
            "max_relocate": 1,
            "failback": 1,
            "status": format!("{sid} ({}, {})", guest.node, ha.crm),
        }));
    }
    rows
}

/// `GET /storage`
pub fn storage_index(world: &World, token: &Token, kind: Option<&str>) -> Vec<Value> {
    world
        .storages
        .iter()
        .filter(|s| kind.is_none_or(|k| k == s.plugintype))
        .filter(|s| {
            token.has_any(
                &format!("/storage/{}", s.id),
                &["Datastore.Audit", "Datastore.AllocateSpace"],
            )
        })
        .map(|storage| {
            let mut row = Row::new();
            put(&mut row, "storage", storage.id.as_str());
            put(&mut row, "type", storage.plugintype.as_str());
            put(&mut row, "content", storage.content.as_str());
            if storage.shared {
                put(&mut row, "shared", 1);
            }
            if storage.plugintype == "dir" {
                put(&mut row, "path", "/var/lib/vz");
            }
            if let Some(nodes) = &storage.nodes {
                put(&mut row, "nodes", nodes.join(","));
            }
            put(&mut row, "digest", short_digest(&storage.id));
            Value::Object(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn v9() -> PveVersion {
        PveVersion::parse("9.1.5").expect("version")
    }

    fn root() -> Token {
        Token {
            full_id: "root@pam!t".into(),
            secret: "s".into(),
            privileges: None,
        }
    }

    #[test]
    fn cluster_resources_have_pool_guest_node_storage_and_network_rows() {
        let world = World::seed(1_000_000.0, v9(), "AA");
        let rows: Vec<Value> = cluster_resources(&world, v9(), &root(), 1_000_000.0, None)
            .iter()
            .map(FlatRow::to_value)
            .collect();
        let types: BTreeSet<&str> = rows.iter().filter_map(|r| r["type"].as_str()).collect();
        assert_eq!(
            types,
            BTreeSet::from(["pool", "qemu", "lxc", "node", "storage", "network"])
        );
        let vm = rows.iter().find(|r| r["id"] == "qemu/100").expect("vm row");
        assert_eq!(vm["template"], 0);
        assert_eq!(vm["tags"], "ha;prod");
        assert_eq!(vm["pool"], "home");
        assert!(vm["memhost"].is_u64());
        let only_vms = cluster_resources(&world, v9(), &root(), 1_000_000.0, Some("vm"));
        assert_eq!(only_vms.len(), 2);
        let v8 = PveVersion::parse("8.4.1").unwrap();
        let old = cluster_resources(&world, v8, &root(), 1_000_000.0, Some("sdn"));
        assert_eq!(old[0].to_value()["type"], "sdn");
    }

    #[test]
    fn offline_node_shows_bare_unknown_guest_rows() {
        let mut world = World::seed(1_000_000.0, v9(), "AA");
        world.nodes[0].online = false;
        let rows: Vec<Value> = cluster_resources(&world, v9(), &root(), 1_000_000.0, None)
            .iter()
            .map(FlatRow::to_value)
            .collect();
        let ct = rows.iter().find(|r| r["id"] == "lxc/101").expect("ct row");
        let keys: BTreeSet<&str> = ct
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "vmid", "node", "type", "status"])
        );
        assert_eq!(ct["status"], "unknown");
        let node = rows.iter().find(|r| r["type"] == "node").expect("node");
        assert_eq!(node["status"], "offline");
        let storage = rows
            .iter()
            .find(|r| r["type"] == "storage")
            .expect("storage");
        assert_eq!(storage["status"], "unknown");
    }

    #[test]
    fn node_status_has_strings_where_proxmox_has_strings() {
        let world = World::seed(1_000_000.0, v9(), "AA");
        let status = node_status(&world.nodes[0], v9(), 1_000_000.0);
        assert!(status["loadavg"]
            .as_array()
            .expect("array")
            .iter()
            .all(Value::is_string));
        assert!(status["cpuinfo"]["mhz"].is_string());
        assert_eq!(status["cpuinfo"]["hvm"], "1");
        assert_eq!(status["boot-info"]["secureboot"], 0);
        assert!(status["pveversion"]
            .as_str()
            .expect("string")
            .starts_with("pve-manager/9.1.5/"));
    }

    #[test]
    fn restricted_tokens_see_only_what_they_may() {
        let world = World::seed(1_000_000.0, v9(), "AA");
        let token = Token {
            full_id: "ro@pve!t".into(),
            secret: "s".into(),
            privileges: Some(BTreeMap::from([(
                "/vms/101".to_string(),
                BTreeSet::from(["VM.Audit".to_string()]),
            )])),
        };
        let rows: Vec<Value> = cluster_resources(&world, v9(), &token, 1_000_000.0, None)
            .iter()
            .map(FlatRow::to_value)
            .collect();
        let guest_ids: Vec<&str> = rows
            .iter()
            .filter(|r| r["vmid"].is_u64())
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert_eq!(guest_ids, vec!["lxc/101"]);
        let node = rows.iter().find(|r| r["type"] == "node").expect("node row");
        assert!(node.get("cpu").is_none(), "no Sys.Audit, no node stats");
        assert!(rows.iter().all(|r| r["type"] != "storage"));
    }

    #[test]
    fn old_releases_list_container_vmids_as_strings() {
        let world = World::seed(1_000_000.0, v9(), "AA");
        let ct = &world.guests[&101];
        let v7 = PveVersion::parse("7.4.3").unwrap();
        assert_eq!(lxc_list_row(ct, 1_000_000.0, v7)["vmid"], "101");
        assert_eq!(lxc_list_row(ct, 1_000_000.0, v9())["vmid"], 101);
        let current = qemu_current(&world.guests[&100], 1_000_000.0, v9());
        assert_eq!(current["ha"]["managed"], 0);
        assert_eq!(current["qmpstatus"], "running");
        assert!(current["clipboard"].is_null());
    }
}
