//! The configuration (SPEC §2) as an admin meets it: TOML text and environment variables in,
//! a typed config or a one-line error naming the key out. Canary secrets check that no error
//! ever quotes a token or password.
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use pve2mqtt::config::*;

/// Distinctive secrets: any test output containing them is a leak.
const TOKEN_SECRET: &str = "S3CR3T-5f1b9c2e-do-not-leak";
const PASSWORD: &str = "PW-S3CR3T-hunter2-do-not-leak";

fn token() -> String {
    format!("pve2mqtt@pve!bridge={TOKEN_SECRET}")
}

fn minimal() -> String {
    format!(
        "[proxmox]\nurl = \"https://pve.example.lan:8006\"\ntoken = \"{}\"\n",
        token()
    )
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn load(toml: &str, pairs: &[(&str, &str)]) -> Config {
    match Config::from_toml_str(toml, &env(pairs)) {
        Ok(config) => config,
        Err(error) => panic!("config refused: {error}"),
    }
}

/// The error message, after checking it leaks neither secret (Display nor Debug).
fn error(toml: &str, pairs: &[(&str, &str)]) -> String {
    let Err(error) = Config::from_toml_str(toml, &env(pairs)) else {
        panic!("config accepted:\n{toml}\n{pairs:?}");
    };
    let message = error.to_string();
    for shown in [&message, &format!("{error:?}")] {
        assert!(
            !shown.contains(TOKEN_SECRET),
            "token secret leaked: {shown}"
        );
        assert!(!shown.contains(PASSWORD), "password leaked: {shown}");
    }
    message
}

/// `minimal()` with extra sections appended.
fn with(extra: &str) -> String {
    format!("{}\n{extra}", minimal())
}

fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create temp file");
    file.write_all(contents.as_bytes())
        .expect("write temp file");
    file
}

/// Enough PEM for the config check (the TLS module does the X.509 parsing).
const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";

#[test]
fn defaults_fill_every_key_but_the_proxmox_address_and_token() {
    let config = load(&minimal(), &[]);
    let [cluster] = config.clusters.as_slice() else {
        panic!("expected one cluster, got {}", config.clusters.len());
    };
    assert_eq!(cluster.urls, ["https://pve.example.lan:8006"]);
    assert_eq!(cluster.token.user, "pve2mqtt@pve");
    assert_eq!(cluster.token.token_id, "bridge");
    assert_eq!(cluster.token.secret.expose(), TOKEN_SECRET);
    assert!(cluster.tls_verify);
    assert_eq!(cluster.ca_file, None);
    assert_eq!(cluster.fingerprint, None);
    assert_eq!(cluster.name, None);
    assert_eq!(cluster.timeout, Duration::from_secs(10));
    assert_eq!(config.poll.interval, Duration::from_secs(10));
    assert_eq!(config.poll.slow_interval, Duration::from_secs(60));
    let mqtt = &config.mqtt;
    assert_eq!(mqtt.url, "mqtt://127.0.0.1:1883");
    assert_eq!(
        (mqtt.host.as_str(), mqtt.port, mqtt.tls),
        ("127.0.0.1", 1883, false)
    );
    assert_eq!(mqtt.username, None);
    assert!(mqtt.password.is_none());
    assert_eq!(mqtt.client_id, "pve2mqtt");
    assert_eq!(mqtt.base_topic, "pve2mqtt");
    assert_eq!(mqtt.ca_file, None);
    assert!(config.homeassistant.discovery);
    assert_eq!(config.homeassistant.discovery_prefix, "homeassistant");
    assert!(config.commands.enabled);
    assert!(!config.commands.read_only);
    assert!(config.commands.allow.is_empty());
    assert_eq!(config.backup.storage, "local");
    assert_eq!(config.backup.mode, "snapshot");
    assert_eq!(config.backup.compress, "zstd");
}

#[test]
fn the_spec_example_file_loads() {
    let ca = temp_file(PEM);
    let fingerprint = ["ab"; 32].join(":");
    // SPEC §2 verbatim, except the CA path (must exist) and the elided fingerprint.
    let spec = format!(
        r#"
[proxmox]
url = "https://pve.example.lan:8006"      # several for failover: urls = ["https://a:8006", "https://b:8006"]
token = "pve2mqtt@pve!bridge=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"   # USER@REALM!TOKENID=SECRET
tls_verify = true                          # default true
ca_file = "{ca}"  # optional: trust this CA (Proxmox's own pve-root-ca.pem)
fingerprint = "{fingerprint}"                    # optional: pin the server certificate's SHA-256 fingerprint
name = "home"                              # cluster id used in topics and unique ids; default: the
                                       # cluster's name, or the node's name on a standalone host
timeout = "10s"

[poll]
interval = "10s"          # fast lane: cluster-wide state
slow_interval = "60s"     # slow lane: node details, backups, tasks

[mqtt]
url = "mqtt://127.0.0.1:1883"   # mqtts:// for TLS
username = ""
password = ""
client_id = "pve2mqtt"
base_topic = "pve2mqtt"
ca_file = ""                    # for mqtts with a private CA

[homeassistant]
discovery = true
discovery_prefix = "homeassistant"

[commands]
enabled = true
read_only = false               # true: no command reaches Proxmox, every one is rejected
allow = []                      # empty = every guest; else entries like "100", "tag:ha-control", "pool:home"

[backup]                        # defaults for backups asked for without options
storage = "local"
mode = "snapshot"
compress = "zstd"
"#,
        ca = ca.path().display()
    );
    let config = load(&spec, &[]);
    let cluster = &config.clusters[0];
    assert_eq!(cluster.token.id(), "pve2mqtt@pve!bridge");
    assert_eq!(cluster.ca_file.as_deref(), Some(ca.path()));
    assert_eq!(cluster.fingerprint, Some([0xab; 32]));
    assert_eq!(cluster.name.as_deref(), Some("home"));
    assert_eq!(config.mqtt.username, None, "empty username means none");
    assert!(config.mqtt.password.is_none(), "empty password means none");
    assert_eq!(config.mqtt.ca_file, None, "empty ca_file means none");
    assert!(config.commands.allow.is_empty());
}

#[test]
fn the_sample_fixture_files_load() {
    let full = load(include_str!("../tests/fixtures/config/full.toml"), &[]);
    assert_eq!(
        full.clusters[0].urls,
        [
            "https://pve1.example.lan:8006",
            "https://pve2.example.lan:8006"
        ]
    );
    assert_eq!((full.mqtt.port, full.mqtt.tls), (8883, true));
    assert_eq!(full.poll.slow_interval, Duration::from_secs(120));
    assert_eq!(
        full.commands.allow,
        [
            AllowRule::Vmid(100),
            AllowRule::Tag("ha-control".into()),
            AllowRule::Pool("home".into())
        ]
    );
    load(include_str!("../tests/fixtures/config/minimal.toml"), &[]);
    // The lab cluster's token_file does not exist here: give its token by name instead,
    // which also shows the env layer replacing a file `token_file`.
    let clusters = load(
        include_str!("../tests/fixtures/config/clusters.toml"),
        &[("PVE2MQTT_PROXMOX__LAB__TOKEN", &token())],
    );
    assert_eq!(clusters.clusters.len(), 2);
    assert!(!clusters.clusters[1].tls_verify);
}

#[test]
fn the_environment_overrides_the_file() {
    let file = with(
        "[poll]\ninterval = \"30s\"\n[mqtt]\nbase_topic = \"from-file\"\n[homeassistant]\ndiscovery = true\n",
    );
    let config = load(
        &file,
        &[
            ("PVE2MQTT_POLL__INTERVAL", "2s"),
            ("PVE2MQTT_MQTT__BASE_TOPIC", "from-env"),
            ("PVE2MQTT_HOMEASSISTANT__DISCOVERY", "false"),
            ("PVE2MQTT_PROXMOX__TLS_VERIFY", "false"),
            ("PVE2MQTT_PROXMOX__TIMEOUT", "1m"),
            ("PVE2MQTT_COMMANDS__READ_ONLY", "true"),
        ],
    );
    assert_eq!(config.poll.interval, Duration::from_secs(2));
    assert_eq!(config.mqtt.base_topic, "from-env");
    assert!(!config.homeassistant.discovery);
    assert!(!config.clusters[0].tls_verify);
    assert_eq!(config.clusters[0].timeout, Duration::from_secs(60));
    assert!(config.commands.read_only);
}

#[test]
fn env_urls_replace_a_file_url_in_failover_order() {
    let config = load(
        &minimal(),
        &[("PVE2MQTT_PROXMOX__URLS", "https://b:8006, https://a:8006/,")],
    );
    assert_eq!(
        config.clusters[0].urls,
        ["https://b:8006", "https://a:8006"]
    );
}

#[test]
fn env_alone_is_a_complete_config() {
    let token = token();
    let vars = env(&[
        ("PVE2MQTT_PROXMOX__URL", "https://10.0.0.5:8006"),
        ("PVE2MQTT_PROXMOX__TOKEN", &token),
        ("PVE2MQTT_MQTT__URL", "mqtt://broker:1884"),
        ("PVE2MQTT_COMMANDS__ALLOW", "100, tag:x,pool:home"),
        ("PVE2MQTT_CONFIG", "/ignored/because/it/belongs/to/the/cli"),
        ("PATH", "/usr/bin"),
    ]);
    let config = match Config::load_with_env(None, &vars) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(config.clusters[0].urls, ["https://10.0.0.5:8006"]);
    assert_eq!(
        (config.mqtt.host.as_str(), config.mqtt.port),
        ("broker", 1884)
    );
    assert_eq!(
        config.commands.allow,
        [
            AllowRule::Vmid(100),
            AllowRule::Tag("x".into()),
            AllowRule::Pool("home".into())
        ]
    );
}

#[test]
fn env_sections_and_keys_are_case_insensitive() {
    let config = load(
        &minimal(),
        &[
            ("PVE2MQTT_Mqtt__base_Topic", "mixed"),
            ("PVE2MQTT_poll__SLOW_INTERVAL", "5m"),
        ],
    );
    assert_eq!(config.mqtt.base_topic, "mixed");
    assert_eq!(config.poll.slow_interval, Duration::from_secs(300));
}

#[test]
fn booleans_accept_the_usual_spellings_from_env_and_file() {
    for (text, expected) in [
        ("true", true),
        ("False", false),
        ("1", true),
        ("0", false),
        ("yes", true),
        ("off", false),
    ] {
        let config = load(&minimal(), &[("PVE2MQTT_COMMANDS__ENABLED", text)]);
        assert_eq!(config.commands.enabled, expected, "{text}");
    }
    let config = load(&with("[commands]\nenabled = \"false\"\n"), &[]);
    assert!(!config.commands.enabled);
    let message = error(&minimal(), &[("PVE2MQTT_COMMANDS__ENABLED", "maybe")]);
    assert_eq!(
        message,
        "PVE2MQTT_COMMANDS__ENABLED: expected a boolean (true or false), got \"maybe\""
    );
    let message = error(&with("[homeassistant]\ndiscovery = 2\n"), &[]);
    assert_eq!(
        message,
        "homeassistant.discovery: expected a boolean (true or false), got 2"
    );
}

#[test]
fn the_file_can_be_loaded_from_a_path_and_a_missing_one_is_named() {
    let file = temp_file(&minimal());
    let config = match Config::load_with_env(Some(file.path()), &HashMap::new()) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(config.clusters.len(), 1);

    let missing = Path::new("/nonexistent/pve2mqtt.toml");
    let Err(error) = Config::load(Some(missing)) else {
        panic!("a missing file was accepted");
    };
    assert!(matches!(error, ConfigError::ReadFile { .. }));
    assert!(
        error.to_string().contains("/nonexistent/pve2mqtt.toml"),
        "{error}"
    );
}

#[test]
fn token_file_is_read_and_its_trailing_newline_dropped() {
    let secret = temp_file(&format!("{}\n", token()));
    let toml = format!(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
        secret.path().display()
    );
    let config = load(&toml, &[]);
    assert_eq!(config.clusters[0].token.secret.expose(), TOKEN_SECRET);
}

#[test]
fn password_file_is_read_keeping_inner_spaces() {
    let secret = temp_file(&format!(" {PASSWORD} \r\n"));
    let path = secret.path().display().to_string();
    let config = load(
        &minimal(),
        &[
            ("PVE2MQTT_MQTT__PASSWORD_FILE", &path),
            ("PVE2MQTT_MQTT__USERNAME", "bridge"),
        ],
    );
    let password = config.mqtt.password.as_ref().map(Secret::expose);
    assert_eq!(password, Some(format!(" {PASSWORD} ").as_str()));
    assert_eq!(config.mqtt.username.as_deref(), Some("bridge"));
}

#[test]
fn an_env_token_file_replaces_the_file_token() {
    let secret = temp_file("other@pve!id=abc\n");
    let path = secret.path().display().to_string();
    let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__TOKEN_FILE", &path)]);
    assert_eq!(config.clusters[0].token.id(), "other@pve!id");
    // An empty variable (e.g. an unset compose variable) does not clear the file token.
    let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__TOKEN_FILE", "")]);
    assert_eq!(config.clusters[0].token.secret.expose(), TOKEN_SECRET);
}

#[test]
fn token_and_token_file_together_are_a_conflict() {
    let message = error(&with_proxmox_key("token_file = \"/run/secrets/x\""), &[]);
    assert_eq!(
        message,
        "`proxmox.token` and `proxmox.token_file` are both set; give only one of them"
    );
    let message = error(
        "",
        &[
            ("PVE2MQTT_PROXMOX__URL", "https://pve:8006"),
            ("PVE2MQTT_PROXMOX__TOKEN", &token()),
            ("PVE2MQTT_PROXMOX__TOKEN_FILE", "/run/secrets/x"),
        ],
    );
    assert!(
        message.contains("PVE2MQTT_PROXMOX__TOKEN` and `PVE2MQTT_PROXMOX__TOKEN_FILE"),
        "{message}"
    );
    let message = error(
        &with(&format!(
            "[mqtt]\npassword = \"{PASSWORD}\"\npassword_file = \"/x\"\n"
        )),
        &[],
    );
    assert!(
        message.contains("`mqtt.password` and `mqtt.password_file`"),
        "{message}"
    );
}

/// `minimal()` with one more line in its `[proxmox]` table.
fn with_proxmox_key(line: &str) -> String {
    format!("{}{line}\n", minimal())
}

#[test]
fn an_unreadable_secret_file_names_the_key_and_the_path() {
    let message = error(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"/nonexistent/token\"\n",
        &[],
    );
    assert!(
        message.starts_with("proxmox.token_file: cannot read `/nonexistent/token`"),
        "{message}"
    );
    let message = error(
        &minimal(),
        &[("PVE2MQTT_MQTT__PASSWORD_FILE", "/nonexistent/pw")],
    );
    assert!(
        message.starts_with("PVE2MQTT_MQTT__PASSWORD_FILE: cannot read `/nonexistent/pw`"),
        "{message}"
    );
    let empty = temp_file("\n");
    let toml = format!(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
        empty.path().display()
    );
    assert!(error(&toml, &[]).contains("the file is empty"));
}

#[test]
fn a_token_file_with_a_bad_token_does_not_echo_it() {
    let secret = temp_file(&format!("{TOKEN_SECRET}\n"));
    let toml = format!(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken_file = \"{}\"\n",
        secret.path().display()
    );
    let message = error(&toml, &[]);
    assert!(
        message.starts_with("proxmox.token_file: the contents of"),
        "{message}"
    );
    assert!(message.contains("USER@REALM!TOKENID=SECRET"), "{message}");
}

#[test]
fn malformed_tokens_are_refused_by_shape_without_echoing() {
    for bad in [
        TOKEN_SECRET.to_owned(),
        format!("pve2mqtt@pve!bridge{TOKEN_SECRET}"),
        format!("pve2mqtt!bridge={TOKEN_SECRET}"),
        format!("@pve!bridge={TOKEN_SECRET}"),
        format!("pve2mqtt@pve!={TOKEN_SECRET}"),
        format!("pve2mqtt@pve!bri dge={TOKEN_SECRET}"),
        "pve2mqtt@pve!bridge=".to_owned(),
        format!("PVEAPIToken=pve2mqtt@pve!bridge={TOKEN_SECRET}"),
        format!("pve2mqtt@pve!bridge={TOKEN_SECRET} {TOKEN_SECRET}"),
        format!("xééééééé@pve!bridge{TOKEN_SECRET}"), // byte 12 is inside a char,
        format!("pve2mqtt@pvé!bridge={TOKEN_SECRET}"),
    ] {
        let toml = format!("[proxmox]\nurl = \"https://pve:8006\"\ntoken = \"{bad}\"\n");
        let message = error(&toml, &[]);
        assert!(
            message.starts_with("proxmox.token: expected USER@REALM!TOKENID=SECRET"),
            "{message}"
        );
        let message = error(
            "",
            &[
                ("PVE2MQTT_PROXMOX__URL", "https://pve:8006"),
                ("PVE2MQTT_PROXMOX__TOKEN", &bad),
            ],
        );
        assert!(
            message.starts_with("PVE2MQTT_PROXMOX__TOKEN: expected"),
            "{message}"
        );
    }
    let message = error(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken = 12345\n",
        &[],
    );
    assert_eq!(
        message,
        "proxmox.token: expected a string, got an integer (value not shown)"
    );
}

#[test]
fn the_token_is_trimmed_and_its_parts_split() {
    let config = load(
        &minimal(),
        &[("PVE2MQTT_PROXMOX__TOKEN", "root@pam!ha.bridge_1=abc-def\n")],
    );
    let token = &config.clusters[0].token;
    assert_eq!(
        (token.user.as_str(), token.token_id.as_str()),
        ("root@pam", "ha.bridge_1")
    );
    assert_eq!(
        token.header_value(),
        "PVEAPIToken=root@pam!ha.bridge_1=abc-def"
    );
}

#[test]
fn missing_url_or_token_names_the_key() {
    let message = error(&format!("[proxmox]\ntoken = \"{}\"\n", token()), &[]);
    assert!(message.starts_with("missing `proxmox.url`"), "{message}");
    let message = error("[proxmox]\nurl = \"https://pve:8006\"\n", &[]);
    assert!(message.starts_with("missing `proxmox.token`"), "{message}");
    let message = error("", &[]);
    assert!(message.starts_with("missing `proxmox`"), "{message}");
    assert!(message.contains("PVE2MQTT_PROXMOX__URL"), "{message}");
}

#[test]
fn url_and_urls_together_are_a_conflict() {
    let toml = format!(
        "[proxmox]\nurl = \"https://a:8006\"\nurls = [\"https://b:8006\"]\ntoken = \"{}\"\n",
        token()
    );
    assert_eq!(
        error(&toml, &[]),
        "`proxmox.url` and `proxmox.urls` are both set; give only one of them"
    );
    let toml = format!("[proxmox]\nurls = []\ntoken = \"{}\"\n", token());
    assert_eq!(
        error(&toml, &[]),
        "proxmox.urls: must list at least one URL"
    );
}

#[test]
fn proxmox_urls_are_normalised_and_checked() {
    for (given, expected) in [
        (
            "https://pve.example.lan:8006/",
            "https://pve.example.lan:8006",
        ),
        ("  https://PVE.lan:8006  ", "https://pve.lan:8006"),
        ("http://10.0.0.1:8006", "http://10.0.0.1:8006"),
        ("https://[fd00::1]:8006", "https://[fd00::1]:8006"),
    ] {
        let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__URL", given)]);
        assert_eq!(config.clusters[0].urls, [expected], "{given}");
    }
    let bad = |url: &str| error(&minimal(), &[("PVE2MQTT_PROXMOX__URL", url)]);
    let message = bad("https://pve:8006/api2/json");
    assert!(
        message.starts_with("PVE2MQTT_PROXMOX__URL: give the base URL without `/api2/json`"),
        "{message}"
    );
    assert!(message.contains("adds /api2/json itself"), "{message}");
    assert!(bad("https://pve:8006/pve").contains("must not have a path (got `/pve`)"));
    assert!(bad("pve:8006").contains("must start with https://"));
    assert!(bad("ftp://pve:8006").contains("must start with https://"));
    assert!(bad("https://pve:8006/?x=1").contains("query or fragment"));
    assert!(bad("not a url").contains("is not a valid URL"));
    let message = bad(&format!("https://root:{PASSWORD}@pve:8006"));
    assert!(
        message.contains("must not contain a user name or password"),
        "{message}"
    );
    let message = error(
        &format!(
            "[proxmox]\nurls = [\"https://a:8006\", 5]\ntoken = \"{}\"\n",
            token()
        ),
        &[],
    );
    assert!(
        message.starts_with("proxmox.urls[1]: expected a URL string"),
        "{message}"
    );
}

#[test]
fn fingerprints_are_read_with_or_without_colons_in_any_case() {
    let expected: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(0xa0));
    let lower: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    let colons = pve2mqtt::types::format_fingerprint(&expected);
    for text in [
        lower.clone(),
        lower.to_uppercase(),
        colons.clone(),
        colons.to_lowercase(),
    ] {
        let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__FINGERPRINT", &text)]);
        assert_eq!(config.clusters[0].fingerprint, Some(expected), "{text}");
    }
    for bad in [
        lower[..62].to_owned(),
        format!("{lower}00"),
        colons.replacen(':', "", 1),
        lower.replacen('a', "g", 1),
        "AB:CD".to_owned(),
        "é".repeat(32),
    ] {
        let message = error(&minimal(), &[("PVE2MQTT_PROXMOX__FINGERPRINT", &bad)]);
        assert!(
            message
                .starts_with("PVE2MQTT_PROXMOX__FINGERPRINT: expected the certificate's SHA-256"),
            "{message}"
        );
    }
}

#[test]
fn a_fingerprint_with_several_urls_is_refused_naming_both_keys() {
    let toml = format!(
        "[proxmox]\nurls = [\"https://a:8006\", \"https://b:8006\"]\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
        token(),
        ["AB"; 32].join(":")
    );
    let message = error(&toml, &[]);
    assert!(
        message.starts_with("proxmox.fingerprint: pins one certificate, but proxmox.urls lists 2"),
        "{message}"
    );
    assert!(message.contains("ca_file"), "{message}");
    // One URL with a pin stays fine, and so do several URLs with a CA file.
    let one = format!(
        "[proxmox]\nurl = \"https://a:8006\"\ntoken = \"{}\"\nfingerprint = \"{}\"\n",
        token(),
        ["AB"; 32].join(":")
    );
    assert!(load(&one, &[]).clusters[0].fingerprint.is_some());
    let message = error(
        &minimal(),
        &[
            ("PVE2MQTT_PROXMOX__URLS", "https://a:8006,https://b:8006"),
            ("PVE2MQTT_PROXMOX__FINGERPRINT", &["AB"; 32].join(":")),
        ],
    );
    assert!(
        message.starts_with("PVE2MQTT_PROXMOX__FINGERPRINT: pins one certificate, but PVE2MQTT_PROXMOX__URLS lists 2"),
        "{message}"
    );
}

#[test]
fn ca_file_must_be_a_readable_pem_file() {
    let ca = temp_file(PEM);
    let path = ca.path().display().to_string();
    let config = load(
        &minimal(),
        &[
            ("PVE2MQTT_PROXMOX__CA_FILE", &path),
            ("PVE2MQTT_MQTT__CA_FILE", &path),
        ],
    );
    assert_eq!(config.clusters[0].ca_file.as_deref(), Some(ca.path()));
    assert_eq!(
        config.mqtt.ca_file.as_deref(),
        Some(ca.path()),
        "accepted even with mqtt://"
    );

    let message = error(&with_proxmox_key("ca_file = \"/nonexistent/ca.pem\""), &[]);
    assert!(
        message.starts_with("proxmox.ca_file: cannot read `/nonexistent/ca.pem`"),
        "{message}"
    );
    let directory = tempfile::tempdir().expect("temp dir");
    let message = error(
        &minimal(),
        &[(
            "PVE2MQTT_MQTT__CA_FILE",
            &directory.path().display().to_string(),
        )],
    );
    assert!(
        message.starts_with("PVE2MQTT_MQTT__CA_FILE: cannot read"),
        "{message}"
    );
    assert!(message.contains("is a directory"), "{message}");
    let not_pem = temp_file("just text\n");
    let message = error(
        &minimal(),
        &[(
            "PVE2MQTT_PROXMOX__CA_FILE",
            &not_pem.path().display().to_string(),
        )],
    );
    assert!(message.contains("no PEM certificate"), "{message}");
}

#[test]
fn cluster_names_must_be_topic_safe() {
    for good in ["home", "Home_Lab-2", "x"] {
        let config = load(&minimal(), &[("PVE2MQTT_PROXMOX__NAME", good)]);
        assert_eq!(config.clusters[0].name.as_deref(), Some(good));
    }
    for bad in ["home lab", "a/b", "a+b", "é"] {
        let message = error(&with_proxmox_key(&format!("name = \"{bad}\"")), &[]);
        assert!(
            message.starts_with(&format!(
                "proxmox.name: `{bad}` may only contain letters, digits"
            )),
            "{message}"
        );
        assert!(message.contains("MQTT topics"), "{message}");
    }
}

#[test]
fn durations_are_humantime_strings_above_zero() {
    let config = load(&with("[poll]\ninterval = \"1h30m\"\n"), &[]);
    assert_eq!(config.poll.interval, Duration::from_secs(5400));
    assert_eq!(
        error(&with("[poll]\ninterval = 10\n"), &[]),
        "poll.interval: expected a duration like \"10s\", got 10"
    );
    let message = error(&minimal(), &[("PVE2MQTT_POLL__INTERVAL", "10")]);
    assert!(message.starts_with("PVE2MQTT_POLL__INTERVAL: expected a duration like \"10s\", got \"10\" (time unit needed"), "{message}");
    assert_eq!(
        error(&with_proxmox_key("timeout = \"0s\""), &[]),
        "proxmox.timeout: must be greater than 0, got \"0s\""
    );
    assert_eq!(
        error(&with("[poll]\ninterval = \"500ms\"\n"), &[]),
        "poll.interval: must be at least 1s, got 500ms"
    );
}

#[test]
fn slow_interval_is_at_least_interval_and_follows_it_by_default() {
    assert_eq!(
        error(
            &with("[poll]\ninterval = \"30s\"\nslow_interval = \"20s\"\n"),
            &[]
        ),
        "poll.slow_interval: must be at least poll.interval (30s), got 20s"
    );
    let config = load(&with("[poll]\ninterval = \"2m\"\n"), &[]);
    assert_eq!(config.poll.slow_interval, Duration::from_secs(120));
    let config = load(
        &with("[poll]\ninterval = \"20s\"\nslow_interval = \"20s\"\n"),
        &[],
    );
    assert_eq!(config.poll.slow_interval, Duration::from_secs(20));
}

#[test]
fn mqtt_urls_give_host_port_and_tls() {
    for (url, host, port, tls) in [
        ("mqtt://broker.lan", "broker.lan", 1883, false),
        ("mqtts://broker.lan", "broker.lan", 8883, true),
        ("mqtts://broker.lan:8884/", "broker.lan", 8884, true),
        ("mqtt://[::1]:1884", "::1", 1884, false),
        ("mqtt://10.1.2.3", "10.1.2.3", 1883, false),
    ] {
        let config = load(&minimal(), &[("PVE2MQTT_MQTT__URL", url)]);
        let mqtt = &config.mqtt;
        assert_eq!(
            (mqtt.host.as_str(), mqtt.port, mqtt.tls),
            (host, port, tls),
            "{url}"
        );
        assert_eq!(mqtt.url, url);
    }
    let bad = |url: &str| error(&with(&format!("[mqtt]\nurl = \"{url}\"\n")), &[]);
    assert!(
        bad("tcp://broker:1883").starts_with("mqtt.url: the scheme must be mqtt:// or mqtts://")
    );
    assert!(bad("mqtt://broker:1883/topic").contains("must not have a path"));
    assert!(bad("mqtt://broker:0").contains("between 1 and 65535"));
    assert!(bad("mqtt://:1883").starts_with("mqtt.url:"));
    assert!(bad("broker:1883").contains("scheme must be"));
    assert!(bad(&format!("mqtt://user:{PASSWORD}@broker")).contains("must not contain credentials"));
    assert_eq!(
        error(&with("[mqtt]\nurl = 1883\n"), &[]),
        "mqtt.url: expected a URL string like \"mqtt://127.0.0.1:1883\", got 1883"
    );
}

#[test]
fn several_mqtt_brokers_are_kept_in_order_from_the_file_or_a_comma_separated_variable() {
    let from_file = load(
        &with("[mqtt]\nurls = [\"mqtt://a.lan\", \"mqtts://b.lan:8884\", \"mqtt://[::1]:1885\"]\n"),
        &[],
    );
    let from_env = load(
        &minimal(),
        &[(
            "PVE2MQTT_MQTT__URLS",
            "mqtt://a.lan, mqtts://b.lan:8884,mqtt://[::1]:1885",
        )],
    );
    for mqtt in [&from_file.mqtt, &from_env.mqtt] {
        let brokers: Vec<_> = mqtt
            .brokers
            .iter()
            .map(|b| (b.url.as_str(), b.host.as_str(), b.port, b.tls))
            .collect();
        assert_eq!(
            brokers,
            [
                ("mqtt://a.lan", "a.lan", 1883, false),
                ("mqtts://b.lan:8884", "b.lan", 8884, true),
                ("mqtt://[::1]:1885", "::1", 1885, false),
            ]
        );
        // The first one is the broker named in messages, as with `url`.
        assert_eq!((mqtt.url.as_str(), mqtt.port), ("mqtt://a.lan", 1883));
    }
    // `url` alone (or nothing) is a list of one.
    let one = load(&minimal(), &[("PVE2MQTT_MQTT__URL", "mqtt://c.lan:1999")]);
    assert_eq!(one.mqtt.brokers.len(), 1);
    assert_eq!(one.mqtt.brokers[0].port, 1999);
    assert_eq!(
        load(&minimal(), &[]).mqtt.brokers[0].url,
        "mqtt://127.0.0.1:1883"
    );
}

#[test]
fn mqtt_url_and_urls_together_or_a_bad_entry_are_refused_naming_the_key() {
    assert_eq!(
        error(
            &with("[mqtt]\nurl = \"mqtt://a.lan\"\nurls = [\"mqtt://b.lan\"]\n"),
            &[]
        ),
        "`mqtt.url` and `mqtt.urls` are both set; give only one of them"
    );
    assert_eq!(
        error(
            &minimal(),
            &[
                ("PVE2MQTT_MQTT__URL", "mqtt://a.lan"),
                ("PVE2MQTT_MQTT__URLS", "mqtt://b.lan")
            ]
        ),
        "`PVE2MQTT_MQTT__URL` and `PVE2MQTT_MQTT__URLS` are both set; give only one of them"
    );
    // The environment's `urls` replaces the file's `url`, as for Proxmox.
    let replaced = load(
        &with("[mqtt]\nurl = \"mqtt://a.lan\"\n"),
        &[("PVE2MQTT_MQTT__URLS", "mqtt://b.lan,mqtt://c.lan")],
    );
    assert_eq!(replaced.mqtt.url, "mqtt://b.lan");
    assert!(error(
        &with("[mqtt]\nurls = [\"mqtt://a.lan\", \"http://b.lan\"]\n"),
        &[]
    )
    .starts_with("mqtt.urls[1]: the scheme must be mqtt:// or mqtts://"));
    assert_eq!(
        error(&with("[mqtt]\nurls = []\n"), &[]),
        "mqtt.urls: must list at least one broker URL"
    );
    assert!(error(&with("[mqtt]\nurls = [1883]\n"), &[]).starts_with("mqtt.urls[0]: expected"));
}

#[test]
fn client_id_and_topic_prefixes_are_checked() {
    assert_eq!(
        error(&with("[mqtt]\nclient_id = \"\"\n"), &[]),
        "mqtt.client_id: must not be empty"
    );
    assert_eq!(
        error(&with("[mqtt]\nbase_topic = \"\"\n"), &[]),
        "mqtt.base_topic: must not be empty"
    );
    for (bad, reason) in [
        ("a/+/b", "wildcards"),
        ("a/#", "wildcards"),
        ("/pve", "start or end"),
        ("pve/", "start or end"),
        ("a//b", "empty level"),
        ("a\u{0}b", "NUL"),
    ] {
        let message = error(&minimal(), &[("PVE2MQTT_MQTT__BASE_TOPIC", bad)]);
        assert!(
            message.starts_with("PVE2MQTT_MQTT__BASE_TOPIC: "),
            "{message}"
        );
        assert!(message.contains(reason), "{message}");
        let message = error(
            &minimal(),
            &[("PVE2MQTT_HOMEASSISTANT__DISCOVERY_PREFIX", bad)],
        );
        assert!(
            message.starts_with("PVE2MQTT_HOMEASSISTANT__DISCOVERY_PREFIX: "),
            "{message}"
        );
    }
    let config = load(&minimal(), &[("PVE2MQTT_MQTT__BASE_TOPIC", "home/pve")]);
    assert_eq!(config.mqtt.base_topic, "home/pve");
}

#[test]
fn allow_entries_are_vmids_tags_or_pools() {
    let config = load(
        &with("[commands]\nallow = [100, \"999999999\", \"tag:ha-control\", \"Pool:home\"]\n"),
        &[],
    );
    assert_eq!(
        config.commands.allow,
        [
            AllowRule::Vmid(100),
            AllowRule::Vmid(999_999_999),
            AllowRule::Tag("ha-control".into()),
            AllowRule::Pool("home".into())
        ]
    );
    for (entry, at) in [
        ("\"99\"", "commands.allow[0]"),
        ("\"1000000000\"", "commands.allow[0]"),
        ("\"99999999999999999999999\"", "commands.allow[0]"),
        ("\"vm100\"", "commands.allow[0]"),
        ("\"tag:\"", "commands.allow[0]"),
        ("\"label:x\"", "commands.allow[0]"),
        ("-5", "commands.allow[0]"),
    ] {
        let message = error(&with(&format!("[commands]\nallow = [{entry}]\n")), &[]);
        assert!(message.starts_with(&format!("{at}: entry `")), "{message}");
    }
    let message = error(&minimal(), &[("PVE2MQTT_COMMANDS__ALLOW", "100,bogus")]);
    assert_eq!(
        message,
        "PVE2MQTT_COMMANDS__ALLOW[1]: entry `bogus`: expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`"
    );
    let config = load(
        &with("[commands]\nallow = [100]\n"),
        &[("PVE2MQTT_COMMANDS__ALLOW", "")],
    );
    assert!(
        config.commands.allow.is_empty(),
        "an empty env list means every guest"
    );
    assert!(error(&with("[commands]\nallow = true\n"), &[])
        .starts_with("commands.allow: expected a list"));
}

#[test]
fn backup_defaults_are_checked() {
    let config = load(
        &with("[backup]\nstorage = \"pbs-01\"\nmode = \"Stop\"\ncompress = 0\n"),
        &[],
    );
    assert_eq!(
        (
            config.backup.storage.as_str(),
            config.backup.mode.as_str(),
            config.backup.compress.as_str()
        ),
        ("pbs-01", "stop", "0")
    );
    let config = load(
        &minimal(),
        &[
            ("PVE2MQTT_BACKUP__COMPRESS", "1"),
            ("PVE2MQTT_BACKUP__MODE", "suspend"),
        ],
    );
    assert_eq!(
        (config.backup.mode.as_str(), config.backup.compress.as_str()),
        ("suspend", "1")
    );
    assert_eq!(
        error(&with("[backup]\nmode = \"fast\"\n"), &[]),
        "backup.mode: expected one of snapshot, suspend, stop, got \"fast\""
    );
    assert_eq!(
        error(&minimal(), &[("PVE2MQTT_BACKUP__COMPRESS", "xz")]),
        "PVE2MQTT_BACKUP__COMPRESS: expected one of 0, 1, gzip, lzo, zstd, got \"xz\""
    );
    assert_eq!(
        error(&with("[backup]\nstorage = \"\"\n"), &[]),
        "backup.storage: must not be empty"
    );
    assert!(error(&with("[backup]\nstorage = \"my store\"\n"), &[])
        .starts_with("backup.storage: `my store` is not a Proxmox storage id"));
}

#[test]
fn reporting_defaults_and_overrides_from_file_and_env() {
    let rules = load(&minimal(), &[]).reporting;
    assert_eq!(rules.max_interval, Duration::from_secs(300));
    assert_eq!(rules.min_interval, Duration::ZERO);
    assert_eq!(
        (
            rules.cpu,
            rules.mem_percent,
            rules.rates,
            rules.storage_percent
        ),
        (2.0, 1.0, 10.0, 0.5)
    );
    assert_eq!((rules.rates_floor, rules.loadavg), (10_240.0, 0.5));

    let rules = load(
        &with("[reporting]\nmax_interval = \"2m\"\ncpu = 5\nmem_percent = 2.5\nrates = 0\n"),
        &[
            ("PVE2MQTT_REPORTING__CPU", "0.5"),
            ("PVE2MQTT_REPORTING__STORAGE_PERCENT", " 1 "),
            ("PVE2MQTT_REPORTING__MAX_INTERVAL", "30s"),
            ("PVE2MQTT_REPORTING__MIN_INTERVAL", "1m"),
        ],
    )
    .reporting;
    assert_eq!(rules.max_interval, Duration::from_secs(30), "env wins");
    assert_eq!(rules.min_interval, Duration::from_secs(60));
    let off = load(&with("[reporting]\nmin_interval = \"0s\"\n"), &[]).reporting;
    assert_eq!(off.min_interval, Duration::ZERO, "0 turns it off");
    assert_eq!(
        (
            rules.cpu,
            rules.mem_percent,
            rules.rates,
            rules.storage_percent
        ),
        (0.5, 2.5, 0.0, 1.0)
    );
}

#[test]
fn bad_reporting_values_name_the_key() {
    let expected = "expected a number, 0 or more (0: every change counts), got";
    assert_eq!(
        error(&with("[reporting]\ncpu = -1\n"), &[]),
        format!("reporting.cpu: {expected} -1")
    );
    assert_eq!(
        error(&with("[reporting]\nrates = \"lots\"\n"), &[]),
        format!("reporting.rates: {expected} \"lots\"")
    );
    assert_eq!(
        error(&minimal(), &[("PVE2MQTT_REPORTING__MEM_PERCENT", "NaN")]),
        format!("PVE2MQTT_REPORTING__MEM_PERCENT: {expected} \"NaN\"")
    );
    assert!(error(&with("[reporting]\nmax_interval = \"0s\"\n"), &[])
        .starts_with("reporting.max_interval: must be greater than 0"));
    assert!(error(&with("[reporting]\nmin_interval = \"soon\"\n"), &[])
        .starts_with("reporting.min_interval: expected a duration like \"10s\""));
    assert!(error(&with("[reporting]\nmax_interval = 300\n"), &[])
        .starts_with("reporting.max_interval: expected a duration like \"10s\""));
    assert_eq!(
        error(&with("[reporting]\ncpus = 3\n"), &[]),
        "unknown key `reporting.cpus` (did you mean `cpu`?)"
    );
    assert_eq!(
        error(&with("[reporting]\nmem_precent = 3\n"), &[]),
        "unknown key `reporting.mem_precent` (did you mean `mem_percent`?)"
    );
    assert_eq!(
        error(&minimal(), &[("PVE2MQTT_REPORTING__RATE", "5")]),
        "environment variable `PVE2MQTT_REPORTING__RATE`: the [reporting] section has no key `rate` (did you mean `rates`?)"
    );
}

#[test]
fn unknown_keys_and_sections_in_the_file_are_named() {
    assert_eq!(
        error(&with(&format!("[mqtt]\npasword = \"{PASSWORD}\"\n")), &[]),
        "unknown key `mqtt.pasword` (did you mean `password`?)"
    );
    assert_eq!(
        error(&with("[mqqt]\nurl = \"mqtt://x\"\n"), &[]),
        "unknown section `mqqt` (did you mean `mqtt`?)"
    );
    assert_eq!(
        error(&with("[mqtt]\ninterval = \"5s\"\n"), &[]),
        "unknown key `mqtt.interval` (`interval` belongs in the [poll] section)"
    );
    let message = error(&format!("interval = \"5s\"\n{}", minimal()), &[]);
    assert_eq!(
        message,
        "unknown key `interval` (`interval` belongs in the [poll] section)"
    );
    let message = error(&with("[[mqtts]]\nurl = \"x\"\n"), &[]);
    assert_eq!(message, "unknown section `mqtts` (did you mean `mqtt`?)");
    let message = error(&with("[mqtt.tls]\nverify = true\n"), &[]);
    assert!(message.starts_with("unknown key `mqtt.tls`"), "{message}");
    let message = error(&format!("poll = 5\n{}", minimal()), &[]);
    assert_eq!(message, "poll: expected a table [poll], got 5");
    let message = error(
        &format!(
            "[[proxmox]]\nurl = \"https://a:8006\"\ntoken = \"{}\"\nurll = \"x\"\n",
            token()
        ),
        &[],
    );
    assert_eq!(
        message,
        "unknown key `proxmox[0].urll` (did you mean `url`?)"
    );
}

#[test]
fn unknown_environment_variables_are_named() {
    let message = error(&minimal(), &[("PVE2MQTT_MQTT__PASWORD", PASSWORD)]);
    assert_eq!(
        message,
        "environment variable `PVE2MQTT_MQTT__PASWORD`: the [mqtt] section has no key `pasword` (did you mean `password`?)"
    );
    let message = error(&minimal(), &[("PVE2MQTT_MQQT__URL", "mqtt://x")]);
    assert!(
        message.contains("no config section `mqqt` (did you mean `MQTT`?)"),
        "{message}"
    );
    let message = error(&minimal(), &[("PVE2MQTT_PROXMOX_TOKEN", &token())]);
    assert!(
        message.starts_with(
            "environment variable `PVE2MQTT_PROXMOX_TOKEN`: expected PVE2MQTT_<SECTION>__<KEY>"
        ),
        "{message}"
    );
    assert!(
        message.contains("did you mean `PVE2MQTT_PROXMOX__TOKEN`?"),
        "{message}"
    );
    let message = error(&minimal(), &[("PVE2MQTT__MQTT__BASE_TOPIC", "x")]);
    assert!(
        message.contains("did you mean `PVE2MQTT_MQTT__BASE_TOPIC`?"),
        "{message}"
    );
    let message = error(&minimal(), &[("PVE2MQTT_POLL__INTERVAL__X", "1s")]);
    assert!(
        message.starts_with("environment variable `PVE2MQTT_POLL__INTERVAL__X`"),
        "{message}"
    );
    // Not ours: other prefixes and lower-case look-alikes are left alone.
    load(
        &minimal(),
        &[
            ("PVE2MQTTX", "1"),
            ("pve2mqtt_mqtt__url", "nonsense"),
            ("HOME", "/root"),
        ],
    );
}

#[test]
fn env_variables_that_cannot_name_a_key_are_refused_by_name() {
    for var in [
        "PVE2MQTT_MQTT__",
        "PVE2MQTT_MQTT__PASS-WORD",
        "PVE2MQTT_MQTT__URL[0]",
        "PVE2MQTT_PROXMOX__HOME__",
        "PVE2MQTT___URL",
    ] {
        let message = error(&minimal(), &[(var, PASSWORD)]);
        assert!(
            message.starts_with(&format!("environment variable `{var}`: expected PVE2MQTT_")),
            "{message}"
        );
    }
}

#[test]
fn several_clusters_need_unique_names() {
    let two = format!(
        "[[proxmox]]\nname = \"home\"\nurl = \"https://a:8006\"\ntoken = \"{t}\"\n\
         [[proxmox]]\nname = \"lab\"\nurls = [\"https://b:8006\", \"https://c:8006\"]\ntoken = \"{t}\"\n",
        t = token()
    );
    let config = load(&two, &[]);
    let names: Vec<_> = config.clusters.iter().map(|c| c.name.as_deref()).collect();
    assert_eq!(names, [Some("home"), Some("lab")]);
    assert_eq!(
        config.clusters[1].urls,
        ["https://b:8006", "https://c:8006"]
    );

    let unnamed = two.replacen("name = \"lab\"\n", "", 1);
    assert!(error(&unnamed, &[]).starts_with("missing `proxmox[1].name`"));
    let duplicate = two.replacen("name = \"lab\"", "name = \"HOME\"", 1);
    assert_eq!(
        error(&duplicate, &[]),
        "proxmox[1].name: `HOME` is already the name of proxmox[0]; cluster names must be unique (compared ignoring case)"
    );
    let bad_url = two.replacen("https://c:8006", "https://c:8006/api2/json", 1);
    assert!(error(&bad_url, &[]).starts_with("proxmox[1].urls[1]: give the base URL"));
    // A single [[proxmox]] needs no name.
    let one = format!(
        "[[proxmox]]\nurl = \"https://a:8006\"\ntoken = \"{}\"\n",
        token()
    );
    assert_eq!(load(&one, &[]).clusters.len(), 1);
    assert!(error("proxmox = []\n", &[]).starts_with("missing `proxmox`"));
    assert!(error("proxmox = [1]\n", &[])
        .starts_with("proxmox[0]: expected a table ([[proxmox]]), got 1"));
}

#[test]
fn env_addresses_one_of_several_clusters_by_name() {
    let two = format!(
        "[[proxmox]]\nname = \"home\"\nurl = \"https://a:8006\"\ntoken = \"{t}\"\n\
         [[proxmox]]\nname = \"lab\"\nurl = \"https://b:8006\"\n",
        t = token()
    );
    let config = load(
        &two,
        &[
            ("PVE2MQTT_PROXMOX__LAB__TOKEN", "lab@pve!ro=abc"),
            ("PVE2MQTT_PROXMOX__HOME__TLS_VERIFY", "off"),
        ],
    );
    assert_eq!(config.clusters[1].token.id(), "lab@pve!ro");
    assert!(!config.clusters[0].tls_verify);
    assert!(config.clusters[1].tls_verify);

    let message = error(&two, &[("PVE2MQTT_PROXMOX__TOKEN", "lab@pve!ro=abc")]);
    assert_eq!(
        message,
        "environment variable `PVE2MQTT_PROXMOX__TOKEN`: 2 [[proxmox]] clusters are configured, so name the one meant: PVE2MQTT_PROXMOX__<NAME>__TOKEN"
    );
    let message = error(
        &two,
        &[("PVE2MQTT_PROXMOX__OFFICE__TOKEN", "lab@pve!ro=abc")],
    );
    assert_eq!(
        message,
        "environment variable `PVE2MQTT_PROXMOX__OFFICE__TOKEN`: no [proxmox] cluster in the config file has the name `OFFICE`"
    );
    let message = error(&two, &[("PVE2MQTT_PROXMOX__LAB__TOKN", "x")]);
    assert!(
        message.contains("no key `tokn` (did you mean `token`?)"),
        "{message}"
    );
}

#[test]
fn secrets_never_show_in_debug_or_the_summary() {
    let secret = temp_file(PASSWORD);
    let config = load(
        &minimal(),
        &[
            (
                "PVE2MQTT_MQTT__PASSWORD_FILE",
                &secret.path().display().to_string(),
            ),
            ("PVE2MQTT_MQTT__USERNAME", "bridge"),
        ],
    );
    assert_eq!(
        config.mqtt.password.as_ref().map(Secret::expose),
        Some(PASSWORD)
    );
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        pve2mqtt::check::config_summary(&config),
    ] {
        assert!(
            !shown.contains(TOKEN_SECRET),
            "token secret leaked:\n{shown}"
        );
        assert!(!shown.contains(PASSWORD), "password leaked:\n{shown}");
    }
    assert!(format!("{config:?}").contains("<redacted>"));
}

#[test]
fn a_syntax_error_reports_the_position_but_not_the_line() {
    let toml = format!(
        "[proxmox]\nurl = \"https://pve:8006\"\ntoken = {}\n",
        token()
    );
    let message = error(&toml, &[]);
    assert!(
        message.starts_with("invalid TOML: TOML parse error at line 3, column"),
        "{message}"
    );
    let toml = format!("[mqtt]\npassword = \"{PASSWORD}\n");
    let message = error(&toml, &[]);
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn values_of_the_wrong_type_name_their_key() {
    assert_eq!(
        error(&with_proxmox_key("tls_verify = \"maybe\""), &[]),
        "proxmox.tls_verify: expected a boolean (true or false), got \"maybe\""
    );
    assert_eq!(
        error(&with("[mqtt]\nusername = 5\n"), &[]),
        "mqtt.username: expected a string, got 5"
    );
    assert_eq!(
        error(&with("[mqtt]\npassword = [\"x\"]\n"), &[]),
        "mqtt.password: expected a string, got an array (value not shown)"
    );
    assert_eq!(
        error(&with("[backup]\nmode = 1\n"), &[]),
        "backup.mode: expected one of snapshot, suspend, stop, got 1"
    );
}

#[test]
fn the_summary_says_what_an_admin_checks() {
    let ca = temp_file(PEM);
    let config = load(
        &minimal(),
        &[
            (
                "PVE2MQTT_PROXMOX__CA_FILE",
                &ca.path().display().to_string(),
            ),
            ("PVE2MQTT_PROXMOX__NAME", "home"),
            ("PVE2MQTT_MQTT__URL", "mqtts://broker.lan"),
            ("PVE2MQTT_MQTT__PASSWORD", PASSWORD),
            ("PVE2MQTT_COMMANDS__ALLOW", "100,tag:ha"),
        ],
    );
    let summary = pve2mqtt::check::config_summary(&config);
    for expected in [
        "https://pve.example.lan:8006",
        "token: pve2mqtt@pve!bridge (secret hidden)",
        "CA file",
        "(id: home)",
        "mqtts://broker.lan (host broker.lan, port 8883, TLS)",
        "password: set",
        "base topic: pve2mqtt",
        "prefix homeassistant",
        "poll: every 10s, slow lane every 1m",
        "commands: allowed for 100, tag:ha",
        "backup defaults: storage local, mode snapshot, compress zstd",
    ] {
        assert!(
            summary.contains(expected),
            "missing {expected:?} in:\n{summary}"
        );
    }
    let config = load(
        &minimal(),
        &[
            ("PVE2MQTT_PROXMOX__TLS_VERIFY", "false"),
            ("PVE2MQTT_COMMANDS__READ_ONLY", "true"),
        ],
    );
    let summary = pve2mqtt::check::config_summary(&config);
    assert!(summary.contains("verification OFF"), "{summary}");
    assert!(summary.contains("read-only"), "{summary}");
}

#[test]
fn http_listen_is_off_by_default_and_takes_an_address_from_file_or_environment() {
    assert_eq!(load(&minimal(), &[]).http.listen, None);
    let file = load(&with("[http]\nlisten = \"127.0.0.1:9102\"\n"), &[]);
    assert_eq!(file.http.listen, Some("127.0.0.1:9102".parse().unwrap()));
    let env = load(&minimal(), &[("PVE2MQTT_HTTP__LISTEN", "[::1]:9102")]);
    assert_eq!(env.http.listen, Some("[::1]:9102".parse().unwrap()));
    // PVE2MQTT_LOG_FORMAT is the logger's, not an unknown config key
    load(&minimal(), &[("PVE2MQTT_LOG_FORMAT", "json")]);
}

#[test]
fn a_bad_http_listen_names_the_key() {
    let message = error(&with("[http]\nlisten = \"localhost\"\n"), &[]);
    assert!(message.starts_with("http.listen:"), "{message}");
    let message = error(&minimal(), &[("PVE2MQTT_HTTP__LISTEN", "9102")]);
    assert!(message.contains("PVE2MQTT_HTTP__LISTEN"), "{message}");
}

#[test]
fn of_several_bad_keys_the_first_in_the_file_is_named() {
    for _ in 0..16 {
        let message = error(
            &with("[poll]\nslow_interval = \"soon\"\ninterval = \"often\"\n[mqtt]\nport = 1\n"),
            &[],
        );
        assert!(message.starts_with("poll.slow_interval: "), "{message}");
    }
}
