//! `POST /nodes/{n}/status`, `startall`/`stopall`/`suspendall` and `wakeonlan` as the
//! reference (pve-api-round2.md §10) describes them.

use super::*;

async fn post_raw(
    h: &Harness,
    path: &str,
    auth: &str,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let response = h
        .client
        .post(h.url(path))
        .header("Authorization", auth)
        .form(form)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

const ROOT: &str = "PVEAPIToken=root@pam!pve2mqtt=5ec12e7a-0000-4000-8000-000000000001";

async fn node_status(h: &Harness, node: &str) -> Value {
    h.resource(&format!("node/{node}")).await["status"].clone()
}

async fn wait_node(h: &Harness, node: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while node_status(h, node).await != status {
        assert!(Instant::now() < deadline, "{node} never {status}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test]
async fn a_node_reboot_answers_null_drops_the_node_and_brings_it_back() {
    let h = Harness::start(SimOptions {
        nodes: Some(3),
        guests: Some(6),
        ..test_options()
    })
    .await;
    let (status, body) = post_raw(&h, "/nodes/pve2/status", ROOT, &[("command", "reboot")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"data": null}), "no task");
    assert_eq!(node_status(&h, "pve2").await, "online", "not at once");
    wait_node(&h, "pve2", "offline").await;
    wait_node(&h, "pve2", "online").await;
    let (status, body) = post_raw(&h, "/nodes/pve3/status", ROOT, &[("command", "wakeup")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errors"]["command"].is_string(), "{body}");
    let (_, _) = post_raw(&h, "/nodes/pve3/status", ROOT, &[("command", "shutdown")]).await;
    wait_node(&h, "pve3", "offline").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        node_status(&h, "pve3").await,
        "offline",
        "a shutdown stays down"
    );
    // An offline node's endpoints answer 595 (proxied); Wake-on-LAN is not proxied.
    let (status, _) = post_raw(&h, "/nodes/pve3/stopall", ROOT, &[]).await;
    assert_eq!(status.as_u16(), 595);
    let (status, body) = post_raw(&h, "/nodes/pve3/wakeonlan", ROOT, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], "52:54:00:00:00:03");
    wait_node(&h, "pve3", "online").await;
    let (status, body) = post_raw(&h, "/nodes/pve1/wakeonlan", ROOT, &[]).await;
    assert_eq!(status.as_u16(), 500);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("'pve1' is local node, cannot wake my self!"),
        "{body}"
    );
    let (_, body) = post_raw(&h, "/nodes/pveX/wakeonlan", ROOT, &[]).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no such cluster node 'pveX'"),
        "{body}"
    );
}

/// (path, form, 403 message)
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn node_power_needs_its_privileges_with_the_real_403_texts() {
    let h = Harness::start(test_options()).await;
    h.sim
        .world()
        .add_token(
            "bridge@pve!p=secret",
            [("/vms/101".to_string(), vec!["VM.PowerMgmt".to_string()])]
                .into_iter()
                .collect(),
        )
        .expect("token");
    let auth = "PVEAPIToken=bridge@pve!p=secret";
    let cases: &[Case] = &[
        (
            "/nodes/pve/status",
            &[("command", "reboot")],
            "Permission check failed (/nodes/pve, Sys.PowerMgmt)\n",
        ),
        (
            "/nodes/pve/wakeonlan",
            &[],
            "Permission check failed (/nodes/pve, Sys.PowerMgmt)\n",
        ),
        (
            "/nodes/pve/stopall",
            &[],
            "Permission check failed (/, VM.PowerMgmt)\n",
        ),
        (
            "/nodes/pve/startall",
            &[],
            "Permission check failed (/, VM.PowerMgmt)\n",
        ),
        (
            "/nodes/pve/suspendall",
            &[],
            "Permission check failed (/, VM.PowerMgmt && VM.Config.Disk)\n",
        ),
        (
            "/nodes/pve/stopall",
            &[("vms", "101,100")],
            "Permission check failed (/vms/100, VM.PowerMgmt)\n",
        ),
    ];
    for (path, form, message) in cases {
        let (status, body) = post_raw(&h, path, auth, form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body, json!({"data": null, "message": message}), "{path}");
    }
    // Named guests it may power are enough without VM.PowerMgmt on /.
    let (status, body) = post_raw(&h, "/nodes/pve/stopall", auth, &[("vms", "101")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn stopall_and_suspendall_are_tasks_with_empty_ids_and_sub_tasks() {
    let h = Harness::start(test_options()).await;
    let upid = h.post_form("/nodes/pve/suspendall", &[]).await;
    assert!(
        upid.starts_with("UPID:pve:") && upid.ends_with(":suspendall::root@pam!pve2mqtt:"),
        "{upid}"
    );
    let status = h.wait_task("pve", &upid).await;
    assert_eq!(
        status["exitstatus"], "WARNINGS: 1",
        "a CT cannot be suspended"
    );
    let log = h.log("pve", &upid).await;
    assert!(log.contains(&"Suspending VM 100".to_string()), "{log:?}");
    assert!(
        log.contains(&"WARN: skipping 101, only VMs can be suspended".to_string()),
        "{log:?}"
    );
    assert_eq!(
        h.resource("qemu/100").await["status"],
        "stopped",
        "hibernated"
    );

    let upid = h
        .post_form(
            "/nodes/pve/stopall",
            &[("timeout", "30"), ("force-stop", "0")],
        )
        .await;
    assert!(upid.contains(":stopall::"), "{upid}");
    let status = h.wait_task("pve", &upid).await;
    assert_eq!(status["exitstatus"], "OK");
    let log = h.log("pve", &upid).await;
    assert_eq!(
        log.first().map(String::as_str),
        Some("Stopping CT 101 (timeout = 30 seconds)"),
        "{log:?}"
    );
    assert_eq!(h.resource("lxc/101").await["status"], "stopped");

    let upid = h.post_form("/nodes/pve/startall", &[("vms", "101")]).await;
    let status = h.wait_task("pve", &upid).await;
    assert_eq!(status["exitstatus"], "OK");
    let log = h.log("pve", &upid).await;
    assert!(log.contains(&"Starting CT 101".to_string()), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("VM 100")),
        "only the guests named: {log:?}"
    );
    assert_eq!(h.resource("lxc/101").await["status"], "running");
    let (status, body) = post_raw(&h, "/nodes/pve/stopall", ROOT, &[("timeout", "9000")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
