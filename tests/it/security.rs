use crate::support::*;

/// `pve2mqtt check` on `toml`, written to a file in `dir`: its exit code and output.
async fn check_toml(toml: &str, dir: &std::path::Path) -> (Option<i32>, String) {
    let path = dir.join(format!("check-{}.toml", free_port()));
    std::fs::write(&path, toml).unwrap();
    let out = run_check(&path).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxmox_tls_is_verified_and_a_fingerprint_pin_is_enforced() {
    let broker = Mosquitto::start();
    let sim = start_sim(sim_options()).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let ca_line = cfg
        .toml
        .lines()
        .find(|l| l.starts_with("ca_file"))
        .unwrap()
        .to_string();

    // The right CA: accepted
    let (code, out) = check_toml(&cfg.toml, cfg.dir.path()).await;
    assert_eq!(code, Some(0), "{out}");
    // No CA and no pin: the self-signed chain is refused
    let (code, out) = check_toml(&cfg.toml.replace(&ca_line, ""), cfg.dir.path()).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    // The right pin, without the CA: accepted
    let pin = sim.fingerprint().unwrap();
    let (code, out) = check_toml(
        &cfg.toml
            .replace(&ca_line, &format!("fingerprint = \"{pin}\"")),
        cfg.dir.path(),
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    // A wrong pin is refused even with the right CA
    let wrong = format!("fingerprint = \"{}\"", vec!["AB"; 32].join(":"));
    let (code, out) = check_toml(
        &cfg.toml.replace(&ca_line, &format!("{ca_line}\n{wrong}")),
        cfg.dir.path(),
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fingerprint"), "{out}");
}

/// A broker with a plain anonymous listener (for the test's probe) and a TLS listener
/// that requires a password (for the bridge).
fn tls_broker(dir: &std::path::Path) -> (Mosquitto, u16, std::path::PathBuf) {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test broker CA");
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_path = dir.join("broker-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("broker.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("broker.key"), key.serialize_pem()).unwrap();
    let passwords = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["bridge", "s3cret-mqtt-Pa55"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    let plain = free_port();
    let tls = free_port();
    let conf = format!(
        "per_listener_settings true\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n\
         listener {tls} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n\
         cafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
        pw = passwords.display(),
        ca = ca_path.display(),
        cert = dir.join("broker.pem").display(),
        key = dir.join("broker.key").display(),
    );
    (Mosquitto::start_with(plain, &conf), tls, ca_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_talks_mqtts_with_a_password_and_a_wrong_password_is_refused() {
    let sim = start_sim(sim_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, tls_port, broker_ca) = tls_broker(dir.path());
    let probe = Probe::connect(broker.port, &["pve2mqtt/#"]).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let mqtt = format!(
        "url = \"mqtts://localhost:{tls_port}\"\nca_file = \"{}\"\nusername = \"bridge\"\npassword = \"s3cret-mqtt-Pa55\"",
        broker_ca.display()
    );
    let toml = cfg.toml.replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &mqtt,
    );
    assert_ne!(toml, cfg.toml);
    let (code, out) = check_toml(&toml, cfg.dir.path()).await;
    assert_eq!(code, Some(0), "{out}");
    let bridge =
        Bridge::start(pve2mqtt::config::Config::from_toml_str(&toml, &Default::default()).unwrap());
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    bridge.stop().await.unwrap();

    let wrong = toml.replace("s3cret-mqtt-Pa55", "not-the-password");
    let (code, out) = check_toml(&wrong, cfg.dir.path()).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused")
            || out.contains("NotAuthorized")
            || out.contains("BadUserNamePassword"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_at_trace_level_nor_in_mqtt_payloads() {
    let sim = start_sim(sim_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let (broker, tls_port, broker_ca) = tls_broker(dir.path());
    let probe = Probe::connect(broker.port, &["#"]).await;
    let cfg = TestConfig::new(&sim, broker.port, "");
    let mqtt = format!(
        "url = \"mqtts://localhost:{tls_port}\"\nca_file = \"{}\"\nusername = \"bridge\"\npassword = \"s3cret-mqtt-Pa55\"",
        broker_ca.display()
    );
    let toml = cfg.toml.replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port),
        &mqtt,
    );
    let path = cfg.dir.path().join("secret.toml");
    std::fs::write(&path, &toml).unwrap();
    let child = spawn_bridge(&path, &[("RUST_LOG", "trace")]);
    probe.wait_state("pve2mqtt/pve/qemu/100").await;
    // A command and a refused command add their own log lines.
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"reboot","id":"s"}"#,
            false,
        )
        .await;
    probe
        .publish(
            "pve2mqtt/pve/qemu/100/set",
            r#"{"action":"explode"}"#,
            false,
        )
        .await;
    probe
        .wait_for("reboot done", 20 * SECS, |m| {
            m.topic.ends_with("/task") && m.text().contains("\"ok\"")
        })
        .await;
    let out = terminate(child).await;
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.len() > 10_000,
        "trace logging produced only {} bytes",
        logs.len()
    );
    let token_secret = pve_sim::DEFAULT_TOKEN.split('=').nth(1).unwrap();
    for secret in [token_secret, "s3cret-mqtt-Pa55"] {
        assert!(!logs.contains(secret), "secret {secret} in the logs");
        for m in probe.messages() {
            assert!(
                !m.text().contains(secret),
                "secret in MQTT payload on {}",
                m.topic
            );
        }
    }
}
