//! Packaging checks (issue "Ship it").
//!
//! The Docker image, the compose file, the Home Assistant add-on and the systemd unit are
//! text that no compiler reads, so they drift silently from the bridge they package. These
//! tests hold them to the real thing:
//! - the add-on's option mapping (`addon/pve2mqtt/options_to_env.jq`, run with the same
//!   `jq` the add-on image uses) must produce an environment that pve2mqtt's own config
//!   loader accepts, with every option of `config.yaml` mapped, translated and landing on
//!   the config key of the same name;
//! - the configs shipped for Docker and the systemd unit must load, with the secrets wired
//!   the way the compose file and the unit pass them;
//! - the image must build what CI tests (`cargo build --release --locked`, default
//!   features, no OpenSSL), and the paths the pieces share must agree;
//! - `systemd-analyze verify` must accept the unit, where the tool exists.
//!
//! Nothing here needs Docker or the network. `jq` is required (it is on the project's
//! machines and in the add-on's base image); `systemd-analyze` is optional.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pve2mqtt::config::{AllowRule, Config};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|error| panic!("cannot create a temp dir: {error}"))
}

/// A real (self-signed, EC P-256) CA certificate. `ca_file` must name a readable file
/// holding at least one PEM certificate, so the mapped `ca_file` option needs one.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBoDCCAUegAwIBAgIUOQ5XVwYVPNs2UGnr/n0HdknpZcowCgYIKoZIzj0EAwIw
JTEjMCEGA1UEAwwacHZlMm1xdHQgcGFja2FnaW5nIHRlc3QgQ0EwIBcNMjYxMTI3
MTAyMzA4WhgPMjEyNjExMDMxMDIzMDhaMCUxIzAhBgNVBAMMGnB2ZTJtcXR0IHBh
Y2thZ2luZyB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAElQychTWa
ztXcAcoo+arCcvS7WCOpl6kkHPGJRNekfhBpg8eil6X/8sZtMmwaC3WHoq+gDi2Q
27yL+40ik0BSy6NTMFEwHQYDVR0OBBYEFBrsMnUX7eknR6Dmv5zEoGjRkN+xMB8G
A1UdIwQYMBaAFBrsMnUX7eknR6Dmv5zEoGjRkN+xMA8GA1UdEwEB/wQFMAMBAf8w
CgYIKoZIzj0EAwIDRwAwRAIgHvewnDnS8HkRfi6z4veFFGWMon6zGJgNLLbLP3Pb
1hQCIBpyYvenBF8oqY27Ev3JyQa+Hw1KSARBwdGIzDV74Qnz
-----END CERTIFICATE-----
";

/// Distinctive secrets, so an assertion can tell them apart from anything else.
const TOKEN: &str = "pve2mqtt@pve!bridge=5ec12e7a-0000-4000-8000-packaging01";
const MQTT_PASSWORD: &str = "mqtt pass\nword with spaces";

// ---------------------------------------------------------------------------------------
// A reader for the YAML subset the add-on files are written in
// ---------------------------------------------------------------------------------------

/// Block mappings, block sequences, scalars (plain, quoted, or `>-` folded), `[]` and `{}`.
/// Anything else (flow collections, anchors, inline comments) is refused with the line
/// number, so a file drifting out of this subset fails loudly instead of being misread.
/// This keeps serde_yaml out of the dependencies; the Supervisor's own YAML parser is
/// what finally reads these files.
#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Scalar(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, key: &str) -> &Yaml {
        self.get(key)
            .unwrap_or_else(|| panic!("no key `{key}` in {self:?}"))
    }

    fn entries(&self) -> &[(String, Yaml)] {
        match self {
            Yaml::Map(entries) => entries,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    fn scalar(&self) -> &str {
        match self {
            Yaml::Scalar(text) => text,
            other => panic!("expected a scalar, got {other:?}"),
        }
    }

    fn list(&self) -> &[Yaml] {
        match self {
            Yaml::List(items) => items,
            other => panic!("expected a list, got {other:?}"),
        }
    }

    /// As JSON, the way the Supervisor would write it to options.json: `true`/`false` and
    /// integers typed, everything else a string.
    fn to_json(&self) -> Value {
        match self {
            Yaml::Scalar(text) => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => text
                    .parse::<i64>()
                    .map_or_else(|_| Value::String(text.clone()), Value::from),
            },
            Yaml::List(items) => Value::Array(items.iter().map(Yaml::to_json).collect()),
            Yaml::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), value.to_json()))
                    .collect(),
            ),
        }
    }
}

struct YamlLine<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

fn parse_yaml(source: &str, what: &str) -> Yaml {
    let mut lines = Vec::new();
    for (index, raw) in source.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        assert!(
            !raw.contains('\t'),
            "{what}:{}: tabs are not YAML indentation",
            index + 1
        );
        lines.push(YamlLine {
            number: index + 1,
            indent: raw.len() - trimmed.len(),
            text: trimmed.trim_end(),
        });
    }
    if lines.is_empty() {
        return Yaml::Map(Vec::new());
    }
    let mut position = 0;
    let root = parse_block(&lines, &mut position, lines[0].indent, what);
    if let Some(line) = lines.get(position) {
        panic!(
            "{what}:{}: unexpected indentation or content for the test's YAML reader: {}",
            line.number, line.text
        );
    }
    root
}

fn is_list_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

fn parse_block(lines: &[YamlLine], position: &mut usize, indent: usize, what: &str) -> Yaml {
    if is_list_item(lines[*position].text) {
        parse_list(lines, position, indent, what)
    } else {
        parse_map(lines, position, indent, what)
    }
}

fn parse_list(lines: &[YamlLine], position: &mut usize, indent: usize, what: &str) -> Yaml {
    let mut items = Vec::new();
    while let Some(line) = lines.get(*position) {
        if line.indent != indent || !is_list_item(line.text) {
            break;
        }
        *position += 1;
        let item = line.text[1..].trim();
        if item.is_empty() {
            match lines.get(*position) {
                Some(next) if next.indent > indent => {
                    items.push(parse_block(lines, position, next.indent, what));
                }
                _ => panic!("{what}:{}: empty list item", line.number),
            }
        } else {
            assert!(
                !(item.contains(": ") || item.ends_with(':')) || item.starts_with('"'),
                "{what}:{}: mappings inside list items are not supported: {item}",
                line.number
            );
            items.push(Yaml::Scalar(unquote(item, line.number, what)));
        }
    }
    Yaml::List(items)
}

fn parse_map(lines: &[YamlLine], position: &mut usize, indent: usize, what: &str) -> Yaml {
    let mut entries: Vec<(String, Yaml)> = Vec::new();
    while let Some(line) = lines.get(*position) {
        if line.indent != indent {
            break;
        }
        *position += 1;
        let Some((key, rest)) = line.text.split_once(':') else {
            panic!(
                "{what}:{}: expected `key: value`: {}",
                line.number, line.text
            );
        };
        assert!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-/".contains(c))
                && (rest.is_empty() || rest.starts_with(' ')),
            "{what}:{}: unsupported key syntax: {}",
            line.number,
            line.text
        );
        let rest = rest.trim();
        let value = match rest {
            "" => match lines.get(*position) {
                Some(next) if next.indent > indent => {
                    parse_block(lines, position, next.indent, what)
                }
                Some(next) if next.indent == indent && is_list_item(next.text) => {
                    parse_list(lines, position, indent, what)
                }
                _ => Yaml::Scalar(String::new()),
            },
            ">-" | ">" => {
                let mut parts = Vec::new();
                while let Some(next) = lines.get(*position) {
                    if next.indent <= indent {
                        break;
                    }
                    parts.push(next.text);
                    *position += 1;
                }
                Yaml::Scalar(parts.join(" "))
            }
            "[]" => Yaml::List(Vec::new()),
            "{}" => Yaml::Map(Vec::new()),
            _ => Yaml::Scalar(unquote(rest, line.number, what)),
        };
        assert!(
            entries.iter().all(|(existing, _)| existing != key),
            "{what}:{}: duplicate key `{key}`",
            line.number
        );
        entries.push((key.to_owned(), value));
    }
    Yaml::Map(entries)
}

fn unquote(text: &str, line: usize, what: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            let Some(inner) = inner.strip_suffix(quote) else {
                panic!("{what}:{line}: unterminated quote: {text}");
            };
            assert!(
                !inner.contains('\\') && !inner.contains(quote),
                "{what}:{line}: escapes are not supported: {text}"
            );
            return inner.to_owned();
        }
    }
    assert!(
        !text.starts_with(['[', '{', '&', '*', '!', '|', '>', '@', '`']) && !text.contains(" #"),
        "{what}:{line}: unsupported YAML in value: {text}"
    );
    text.to_owned()
}

// ---------------------------------------------------------------------------------------
// The add-on
// ---------------------------------------------------------------------------------------

const ADDON_CONFIG: &str = "addon/pve2mqtt/config.yaml";
const ADDON_MAPPING: &str = "addon/pve2mqtt/options_to_env.jq";

fn addon_config() -> Yaml {
    parse_yaml(&read(ADDON_CONFIG), ADDON_CONFIG)
}

/// Every option path of the schema (`proxmox.urls`, `log_level`) with its type. One level
/// of sections only: that is all options_to_env.jq flattens.
fn schema_options(config: &Yaml) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    let leaf_type = |path: &str, value: &Yaml| match value {
        Yaml::Scalar(kind) => kind.clone(),
        Yaml::List(items) if items.len() == 1 => format!("[{}]", items[0].scalar()),
        other => panic!("schema option {path}: unsupported type {other:?}"),
    };
    for (key, value) in config.at("schema").entries() {
        match value {
            Yaml::Map(fields) => {
                for (field, kind) in fields {
                    let path = format!("{key}.{field}");
                    let kind = leaf_type(&path, kind);
                    options.insert(path, kind);
                }
            }
            leaf => {
                options.insert(key.clone(), leaf_type(key, leaf));
            }
        }
    }
    options
}

/// The variable an option must become: the config key of the same section and name
/// (`PVE2MQTT_<SECTION>__<KEY>`), except the log level.
fn expected_env_var(path: &str) -> String {
    if path == "log_level" {
        return "RUST_LOG".into();
    }
    let (section, key) = path
        .split_once('.')
        .unwrap_or_else(|| panic!("option {path} is neither `log_level` nor `section.key`"));
    format!(
        "PVE2MQTT_{}__{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// The `"path": "VAR"` lines of `def option_env` in options_to_env.jq.
fn mapping_table() -> BTreeMap<String, String> {
    let source = read(ADDON_MAPPING);
    let start = source
        .find("def option_env: {")
        .unwrap_or_else(|| panic!("{ADDON_MAPPING} has no `def option_env: {{`"));
    let body = &source[start..];
    let end = body
        .find("};")
        .unwrap_or_else(|| panic!("{ADDON_MAPPING}: `def option_env` is not closed"));
    body[..end]
        .lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim().trim_end_matches(',');
            let (path, var) = line.split_once(": ")?;
            Some((
                path.trim_matches('"').to_owned(),
                var.trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

/// A valid, non-default value for every schema option, as the Supervisor would store it.
/// `ca_file` needs a real file, so it is given by the caller.
fn sample_options(ca_file: &Path) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        // One URL: a pinned fingerprint cannot go with several (each node has its own
        // certificate); the failover list is checked without the pin.
        ("proxmox.urls", json!([" https://pve1.example.lan:8006 "])),
        ("proxmox.token", json!(TOKEN)),
        ("proxmox.tls_verify", json!(false)),
        (
            "proxmox.fingerprint",
            json!("AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"),
        ),
        ("proxmox.ca_file", json!(ca_file.to_string_lossy())),
        ("proxmox.name", json!("home")),
        ("proxmox.timeout", json!("15s")),
        ("poll.interval", json!("5s")),
        ("poll.slow_interval", json!("2m")),
        ("poll.updates", json!(true)),
        ("mqtt.base_topic", json!("lab/pve2mqtt")),
        ("mqtt.url", json!("mqtts://broker.example.lan:8883")),
        ("mqtt.username", json!("bridge")),
        ("mqtt.password", json!(MQTT_PASSWORD)),
        ("homeassistant.discovery_prefix", json!("ha-discovery")),
        ("commands.enabled", json!(true)),
        ("commands.read_only", json!(true)),
        ("commands.rollback", json!(true)),
        (
            "commands.allow",
            json!(["100", "tag:ha-control", "pool:home"]),
        ),
        ("backup.storage", json!("nas-backup")),
        ("backup.mode", json!("stop")),
        ("backup.compress", json!("gzip")),
        ("log_level", json!("debug")),
    ])
}

/// Nests `section.key` paths back into the options.json shape.
fn options_json<'a>(values: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let mut root = serde_json::Map::new();
    for (path, value) in values {
        match path.split_once('.') {
            Some((section, key)) => {
                let entry = root
                    .entry(section.to_owned())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                let Value::Object(fields) = entry else {
                    panic!("option {section} is both a section and a value");
                };
                fields.insert(key.to_owned(), value);
            }
            None => {
                root.insert(path.to_owned(), value);
            }
        }
    }
    Value::Object(root)
}

/// What `bashio::services mqtt` prints for the Mosquitto broker add-on.
fn supervisor_mqtt() -> Value {
    json!({
        "host": "core-mosquitto",
        "port": 1883,
        "ssl": false,
        "protocol": "3.1.1",
        "username": "addons",
        "password": MQTT_PASSWORD,
        "addon": "core_mosquitto"
    })
}

/// Runs the add-on's mapping exactly as run.sh does (`jq --argjson mqtt ... -f`) and
/// returns the environment, or jq's error text.
fn run_mapping(options: &Value, mqtt: &Value) -> Result<HashMap<String, String>, String> {
    let dir = temp_dir();
    let options_file = dir.path().join("options.json");
    write(&options_file, &options.to_string());
    let output = Command::new("jq")
        .arg("--argjson")
        .arg("mqtt")
        .arg(mqtt.to_string())
        .arg("-f")
        .arg(repo_path(ADDON_MAPPING))
        .arg(&options_file)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run jq ({error}); it is required for these tests, as in the add-on \
                 image: apt-get install jq"
            )
        });
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let env: serde_json::Map<String, Value> = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("the mapping's output is not a JSON object: {error}"));
    Ok(env
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(text) => (name, text),
            other => panic!("{name}: the mapping must output strings, got {other}"),
        })
        .collect())
}

fn load_env_only(env: &HashMap<String, String>) -> Config {
    Config::load_with_env(None, env)
        .unwrap_or_else(|error| panic!("pve2mqtt refused the add-on's environment: {error}"))
}

#[test]
fn addon_options_map_onto_a_config_the_bridge_loads() {
    // Given every add-on option set to a non-default value but the optional broker ones,
    // and the Supervisor's broker
    let dir = temp_dir();
    let ca_file = dir.path().join("pve-root-ca.pem");
    write(&ca_file, TEST_CA_PEM);
    let mut samples = sample_options(&ca_file);
    samples.retain(|path, _| !BROKER_OPTIONS.contains(path));
    let options = options_json(samples);

    // When the add-on's mapping turns them into the environment and pve2mqtt loads it
    let env = run_mapping(&options, &supervisor_mqtt())
        .unwrap_or_else(|error| panic!("the mapping failed: {error}"));
    let config = load_env_only(&env);

    // Then every value arrives where the option's name says
    let cluster = &config.clusters[0];
    assert_eq!(config.clusters.len(), 1);
    assert_eq!(cluster.urls, ["https://pve1.example.lan:8006"]);
    assert_eq!(cluster.token.user, "pve2mqtt@pve");
    assert_eq!(cluster.token.token_id, "bridge");
    assert_eq!(
        cluster.token.secret.expose(),
        "5ec12e7a-0000-4000-8000-packaging01"
    );
    assert!(!cluster.tls_verify);
    let fingerprint = cluster
        .fingerprint
        .unwrap_or_else(|| panic!("the fingerprint option was lost"));
    assert_eq!(fingerprint[..4], [0xAB, 0xCD, 0xEF, 0x01]);
    assert_eq!(cluster.ca_file.as_deref(), Some(ca_file.as_path()));
    assert_eq!(cluster.name.as_deref(), Some("home"));
    assert_eq!(cluster.timeout, Duration::from_secs(15));
    assert_eq!(config.poll.interval, Duration::from_secs(5));
    assert_eq!(config.poll.slow_interval, Duration::from_secs(120));
    assert!(config.poll.updates);
    assert_eq!(config.mqtt.base_topic, "lab/pve2mqtt");
    assert_eq!(config.homeassistant.discovery_prefix, "ha-discovery");
    assert!(config.commands.enabled);
    assert!(config.commands.read_only);
    assert!(config.commands.rollback);
    assert_eq!(
        config.commands.allow,
        [
            AllowRule::Vmid(100),
            AllowRule::Tag("ha-control".into()),
            AllowRule::Pool("home".into())
        ]
    );
    assert_eq!(config.backup.storage, "nas-backup");
    assert_eq!(config.backup.mode, "stop");
    assert_eq!(config.backup.compress, "gzip");
    assert_eq!(
        env.get("RUST_LOG").map(String::as_str),
        Some("info,pve2mqtt=debug")
    );

    // And the broker is the Supervisor's, credentials included (a password with a space
    // and a newline survives)
    assert_eq!(config.mqtt.url, "mqtt://core-mosquitto:1883");
    assert_eq!(config.mqtt.host, "core-mosquitto");
    assert_eq!(config.mqtt.port, 1883);
    assert!(!config.mqtt.tls);
    assert_eq!(config.mqtt.username.as_deref(), Some("addons"));
    assert_eq!(
        config.mqtt.password.as_ref().map(|p| p.expose()),
        Some(MQTT_PASSWORD)
    );

    // And a failover list (without a pin) keeps its order
    let mut failover = sample_options(&ca_file);
    failover.retain(|path, _| !BROKER_OPTIONS.contains(path));
    failover.remove("proxmox.fingerprint");
    failover.insert(
        "proxmox.urls",
        json!([
            "https://pve1.example.lan:8006",
            " https://pve2.example.lan:8006 "
        ]),
    );
    let env = run_mapping(&options_json(failover), &supervisor_mqtt())
        .unwrap_or_else(|error| panic!("the mapping failed: {error}"));
    assert_eq!(
        load_env_only(&env).clusters[0].urls,
        [
            "https://pve1.example.lan:8006",
            "https://pve2.example.lan:8006"
        ]
    );
}

/// The optional options for a broker other than the Supervisor's.
const BROKER_OPTIONS: [&str; 3] = ["mqtt.url", "mqtt.username", "mqtt.password"];

#[test]
fn broker_options_replace_the_supervisors_broker_when_set() {
    // Given every option set, the broker ones included
    let dir = temp_dir();
    let ca_file = dir.path().join("pve-root-ca.pem");
    write(&ca_file, TEST_CA_PEM);
    let options = options_json(sample_options(&ca_file));

    // When mapped with the Supervisor's broker present, and with none at all
    for supervisor in [supervisor_mqtt(), json!({})] {
        let env = run_mapping(&options, &supervisor)
            .unwrap_or_else(|error| panic!("the mapping failed: {error}"));
        let config = load_env_only(&env);

        // Then the options' broker is the one used, with its own credentials
        assert_eq!(config.mqtt.url, "mqtts://broker.example.lan:8883");
        assert_eq!(config.mqtt.host, "broker.example.lan");
        assert!(config.mqtt.tls);
        assert_eq!(config.mqtt.username.as_deref(), Some("bridge"));
        assert_eq!(
            config.mqtt.password.as_ref().map(|p| p.expose()),
            Some(MQTT_PASSWORD)
        );
    }

    // And credentials without a URL are refused, not mixed into the Supervisor's broker
    let mut half = sample_options(&ca_file);
    half.remove("mqtt.url");
    let error = run_mapping(&options_json(half), &supervisor_mqtt())
        .expect_err("a user without a broker URL must stop the add-on");
    assert!(error.contains("mqtt > url"), "{error}");
}

#[test]
fn supervisor_mqtt_with_tls_and_an_ipv6_host_becomes_an_mqtts_url() {
    // Given a broker reported with ssl on an IPv6 address, as strings (bashio's per-key form)
    let options = options_json([
        ("proxmox.urls", json!(["https://pve.example.lan:8006"])),
        ("proxmox.token", json!(TOKEN)),
    ]);
    let mqtt = json!({"host": "fd00::10", "port": "8883", "ssl": "true", "username": null});

    // When mapped and loaded
    let env =
        run_mapping(&options, &mqtt).unwrap_or_else(|error| panic!("the mapping failed: {error}"));
    let config = load_env_only(&env);

    // Then the URL is mqtts with the address in brackets, and no empty credentials appear
    assert_eq!(config.mqtt.url, "mqtts://[fd00::10]:8883");
    assert_eq!(config.mqtt.host, "fd00::10");
    assert_eq!(config.mqtt.port, 8883);
    assert!(config.mqtt.tls);
    assert_eq!(config.mqtt.username, None);
    assert!(config.mqtt.password.is_none());
}

#[test]
fn every_addon_option_is_mapped_translated_and_named_like_its_config_key() {
    let config = addon_config();
    let schema: BTreeSet<String> = schema_options(&config).into_keys().collect();
    let table = mapping_table();
    let dir = temp_dir();
    let samples = sample_options(&dir.path().join("ca.pem"));

    // The jq table names exactly the schema's options, each as its config key's variable
    let mapped: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        mapped, schema,
        "{ADDON_MAPPING} option_env and {ADDON_CONFIG} schema differ"
    );
    for (path, var) in &table {
        assert_eq!(var, &expected_env_var(path), "option {path}");
    }

    // The samples the other tests use cover the whole schema, so those tests exercise
    // every option
    let sampled: BTreeSet<String> = samples.keys().map(|path| (*path).to_owned()).collect();
    assert_eq!(
        sampled, schema,
        "sample_options() in this file must cover every schema option"
    );

    // Every option and section has an English name in the UI, and no translation is stale
    let translations = parse_yaml(
        &read("addon/pve2mqtt/translations/en.yaml"),
        "translations/en.yaml",
    );
    let mut translated = BTreeSet::new();
    for (key, entry) in translations.at("configuration").entries() {
        assert!(
            !entry.at("name").scalar().is_empty(),
            "translation {key} has no name"
        );
        match entry.get("fields") {
            Some(fields) => {
                for (field, text) in fields.entries() {
                    assert!(
                        !text.at("name").scalar().is_empty(),
                        "translation {key}.{field} has no name"
                    );
                    translated.insert(format!("{key}.{field}"));
                }
            }
            None => {
                translated.insert(key.clone());
            }
        }
    }
    assert_eq!(
        translated, schema,
        "translations/en.yaml and the schema differ"
    );

    // Every default belongs to the schema
    let options = config.at("options").to_json();
    let Value::Object(sections) = &options else {
        panic!("options must be a mapping");
    };
    for (key, value) in sections {
        match value {
            Value::Object(fields) => {
                for field in fields.keys() {
                    let path = format!("{key}.{field}");
                    assert!(schema.contains(&path), "default for unknown option {path}");
                }
            }
            _ => assert!(schema.contains(key), "default for unknown option {key}"),
        }
    }
}

#[test]
fn addon_defaults_are_the_bridge_defaults() {
    // Given the add-on's defaults with only the two required options filled in
    let defaults = addon_config().at("options").to_json();
    let mut options = defaults.clone();
    options["proxmox"]["urls"] = json!(["https://pve.example.lan:8006"]);
    options["proxmox"]["token"] = json!(TOKEN);

    // When mapped and loaded, and compared with the bridge's own defaults
    let env = run_mapping(&options, &supervisor_mqtt())
        .unwrap_or_else(|error| panic!("the mapping failed: {error}"));
    let addon = load_env_only(&env);
    let bridge = Config::from_toml_str(
        &format!("[proxmox]\nurl = \"https://pve.example.lan:8006\"\ntoken = \"{TOKEN}\"\n"),
        &HashMap::new(),
    )
    .unwrap_or_else(|error| panic!("minimal config refused: {error}"));

    // Then an add-on user gets the same behaviour as everyone else
    assert_eq!(addon.clusters[0].tls_verify, bridge.clusters[0].tls_verify);
    assert_eq!(addon.poll.interval, bridge.poll.interval);
    assert_eq!(addon.poll.slow_interval, bridge.poll.slow_interval);
    assert_eq!(addon.mqtt.base_topic, bridge.mqtt.base_topic);
    assert_eq!(
        addon.homeassistant.discovery_prefix,
        bridge.homeassistant.discovery_prefix
    );
    assert_eq!(addon.commands.enabled, bridge.commands.enabled);
    assert_eq!(addon.commands.read_only, bridge.commands.read_only);
    assert_eq!(addon.commands.rollback, bridge.commands.rollback);
    assert_eq!(addon.commands.allow, bridge.commands.allow);
    assert_eq!(addon.backup.storage, bridge.backup.storage);
    assert_eq!(addon.backup.mode, bridge.backup.mode);
    assert_eq!(addon.backup.compress, bridge.backup.compress);
    // The image's RUST_LOG default is the add-on's default level too.
    assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("info"));
    assert!(read("docker/Dockerfile").contains("ENV RUST_LOG=info"));
    // The required options have no default, so the Supervisor asks for them.
    assert!(defaults["proxmox"].get("urls").is_none());
    assert!(defaults["proxmox"].get("token").is_none());
}

#[test]
fn an_unknown_addon_option_stops_the_mapping_and_is_named() {
    // Given an option the mapping does not know (a schema entry added without a mapping)
    let mut options = options_json([
        ("proxmox.urls", json!(["https://pve.example.lan:8006"])),
        ("proxmox.token", json!(TOKEN)),
    ]);
    options["poll"] = json!({"jitter": "2s"});

    // When mapped, then it fails and says which option
    let error = run_mapping(&options, &supervisor_mqtt())
        .expect_err("an unmapped option must stop the add-on");
    assert!(error.contains("poll.jitter"), "{error}");

    // And a broker-less Supervisor answer is refused with a reason, not a broken URL
    let error = run_mapping(&options_json([]), &json!({}))
        .expect_err("no broker host must stop the add-on");
    assert!(error.contains("MQTT"), "{error}");
}

#[test]
fn addon_installs_a_prebuilt_image_whose_healthcheck_asks_healthz() {
    let config = addon_config();

    // The image is the release's, so the add-on's version is the crate's
    assert_eq!(
        config.at("version").scalar(),
        env!("CARGO_PKG_VERSION"),
        "{ADDON_CONFIG} version must be the Cargo.toml version"
    );
    assert_eq!(
        config.at("image").scalar(),
        "ghcr.io/pve2mqtt/{arch}-addon-pve2mqtt"
    );
    assert!(
        !repo_path("addon/pve2mqtt/build.yaml").exists(),
        "build.yaml is deprecated: the add-on installs the prebuilt image"
    );
    // MQTT device discovery needs 2024.12
    assert_eq!(config.at("homeassistant").scalar(), "2024.12.0");
    assert_eq!(
        config.at("url").scalar(),
        "https://github.com/pve2mqtt/pve2mqtt"
    );
    // A broker of one's own works without the Mosquitto add-on
    assert_eq!(
        config.at("services").list(),
        [Yaml::Scalar("mqtt:want".into())]
    );
    // s6-overlay's /init is the base image's entrypoint and must stay PID 1.
    assert_eq!(config.at("init").scalar(), "false");
    for arch in config.at("arch").list() {
        assert!(["amd64", "aarch64"].contains(&arch.scalar()), "{arch:?}");
    }

    // The Supervisor's watchdog acts on the image's HEALTHCHECK (`watchdog:` is obsolete),
    // which asks /healthz on the listener the image turns on
    assert!(config.get("watchdog").is_none());
    let instructions = dockerfile_instructions("addon/pve2mqtt/Dockerfile");
    assert!(instructions
        .iter()
        .any(|line| line == "ENV PVE2MQTT_HTTP__LISTEN=0.0.0.0:9102"));
    assert!(instructions
        .iter()
        .any(|line| line.starts_with("HEALTHCHECK ")
            && line.ends_with(r#"CMD ["/usr/local/bin/pve2mqtt", "health"]"#)));
    assert!(config.at("ports").get("9102/tcp").is_some());
    // No exit when there is no broker service yet: the mapping decides, with a reason
    let run = read("addon/pve2mqtt/run.sh");
    assert!(!run.contains("bashio::exit.nok \"No MQTT broker"));

    // The Dockerfile copies the released binary; nothing compiles
    assert!(instructions
        .iter()
        .any(|line| line == "FROM ghcr.io/pve2mqtt/pve2mqtt:${BUILD_VERSION} AS release"));
    assert!(instructions
        .iter()
        .any(|line| line.starts_with("COPY --from=release /usr/local/bin/pve2mqtt ")));
    assert!(!instructions.iter().any(|line| line.contains("cargo")));

    // An icon and a logo (valid PNGs of the sizes the store shows), and a changelog
    // naming this version
    for (file, size) in [("icon.png", (128, 128)), ("logo.png", (250, 100))] {
        let bytes = std::fs::read(repo_path(&format!("addon/pve2mqtt/{file}")))
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{file} is not a PNG");
        let dimension = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((dimension(16), dimension(20)), size, "{file}");
    }
    let changelog = read("addon/pve2mqtt/CHANGELOG.md");
    assert!(changelog.contains(&format!("## {}", env!("CARGO_PKG_VERSION"))));
    let repository = parse_yaml(&read("repository.yaml"), "repository.yaml");
    assert!(!repository.at("name").scalar().is_empty());
}

// ---------------------------------------------------------------------------------------
// The Docker image and compose file
// ---------------------------------------------------------------------------------------

/// Dockerfile instructions with their continuation lines joined.
fn dockerfile_instructions(relative: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(relative).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// The one `cargo build` must be CI's: release, locked, default features, host target.
fn assert_ci_cargo_build(relative: &str) {
    let builds: Vec<String> = dockerfile_instructions(relative)
        .into_iter()
        .filter(|instruction| instruction.contains("cargo build"))
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "{relative}: expected one cargo build: {builds:?}"
    );
    let words: Vec<&str> = builds[0].split_whitespace().collect();
    for required in ["--release", "--locked"] {
        assert!(
            words.contains(&required),
            "{relative}: cargo build lacks {required}"
        );
    }
    for forbidden in [
        "--features",
        "-F",
        "--no-default-features",
        "--all-features",
        "--target",
        "--profile",
    ] {
        assert!(
            !words
                .iter()
                .any(|word| *word == forbidden || word.starts_with(&format!("{forbidden}="))),
            "{relative}: cargo build must use the default features and target, found {forbidden}"
        );
    }
}

/// The exec-form array of an instruction (`CMD ["a", "b"]`).
fn exec_form(relative: &str, instruction: &str) -> Vec<String> {
    let prefix = format!("{instruction} ");
    let found: Vec<String> = dockerfile_instructions(relative)
        .into_iter()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    assert_eq!(found.len(), 1, "{relative}: expected one {instruction}");
    serde_json::from_str(&found[0])
        .unwrap_or_else(|error| panic!("{relative}: {instruction} is not exec form: {error}"))
}

const CONTAINER_CONFIG: &str = "/config/pve2mqtt.toml";

#[test]
fn docker_image_builds_what_ci_tests_and_runs_the_documented_command() {
    assert_ci_cargo_build("docker/Dockerfile");

    assert_eq!(
        exec_form("docker/Dockerfile", "ENTRYPOINT"),
        ["/usr/local/bin/pve2mqtt"]
    );
    assert_eq!(
        exec_form("docker/Dockerfile", "CMD"),
        ["run", "--config", CONTAINER_CONFIG]
    );
    let instructions = dockerfile_instructions("docker/Dockerfile");
    for expected in [
        "STOPSIGNAL SIGTERM",
        "ENV RUST_LOG=info",
        "USER 65532:65532",
    ] {
        assert!(
            instructions.iter().any(|line| line == expected),
            "docker/Dockerfile lacks `{expected}`"
        );
    }
    // Health is the bridge's own /healthz, asked by the binary itself (no curl in the
    // image), on the listener the image turns on
    for dockerfile in ["docker/Dockerfile", "docker/Dockerfile.release"] {
        let instructions = dockerfile_instructions(dockerfile);
        let healthcheck: Vec<&String> = instructions
            .iter()
            .filter(|line| line.starts_with("HEALTHCHECK "))
            .collect();
        assert_eq!(healthcheck.len(), 1, "{dockerfile}");
        assert!(
            healthcheck[0].ends_with(r#"CMD ["/usr/local/bin/pve2mqtt", "health"]"#),
            "{dockerfile}: {}",
            healthcheck[0]
        );
        assert!(
            instructions
                .iter()
                .any(|line| line == "ENV PVE2MQTT_HTTP__LISTEN=0.0.0.0:9102"),
            "{dockerfile}"
        );
        assert_eq!(
            exec_form(dockerfile, "CMD"),
            ["run", "--config", CONTAINER_CONFIG]
        );
    }
}

#[test]
fn release_image_copies_the_musl_binary_and_carries_the_oci_labels() {
    let instructions = dockerfile_instructions("docker/Dockerfile.release");
    assert!(instructions.iter().any(
        |line| line == "COPY --chmod=0755 dist/${TARGETARCH}/pve2mqtt /usr/local/bin/pve2mqtt"
    ));
    assert!(!instructions.iter().any(|line| line.contains("cargo")));
    let labels: String = instructions
        .iter()
        .filter(|line| line.starts_with("LABEL "))
        .cloned()
        .collect();
    for label in ["source", "version", "revision", "licenses", "created"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{label}=")),
            "docker/Dockerfile.release lacks the OCI label {label}"
        );
    }
    // The workflow passes what the labels need and builds from the musl binaries
    let release = read(".github/workflows/release.yml");
    for needle in [
        "x86_64-unknown-linux-musl",
        "aarch64-unknown-linux-musl",
        "SHA256SUMS",
        "docker/Dockerfile.release",
        "linux/amd64,linux/arm64",
        "REVISION=${{ github.sha }}",
        "cargo deb",
    ] {
        assert!(release.contains(needle), "release.yml lacks {needle}");
    }
}

#[test]
fn dependency_graph_has_no_openssl_or_aws_lc() {
    // Cargo.lock lists every package any feature combination could build; none of these
    // may be among them (rustls with ring only: the house rules).
    let lock = read("Cargo.lock");
    let packages: BTreeSet<&str> = lock
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .collect();
    assert!(packages.contains("rustls"), "Cargo.lock was not parsed");
    for forbidden in [
        "openssl",
        "openssl-sys",
        "native-tls",
        "hyper-tls",
        "tokio-native-tls",
        "aws-lc-rs",
        "aws-lc-sys",
    ] {
        assert!(
            !packages.contains(forbidden),
            "Cargo.lock contains {forbidden}"
        );
    }
}

#[test]
fn dockerignore_keeps_secrets_and_build_output_out_and_sources_in() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_end_matches('/').to_owned())
        .collect();
    for excluded in ["target", ".git", "docker/secrets"] {
        assert!(
            ignored.iter().any(|line| line == excluded),
            ".dockerignore must exclude {excluded}"
        );
    }
    // The Dockerfile copies the whole context; these are what the build reads.
    for needed in ["Cargo.toml", "Cargo.lock", "src", "crates", "docker"] {
        assert!(
            !ignored
                .iter()
                .any(|line| line == needed || line == "*" || line == "**"),
            ".dockerignore must not exclude {needed}"
        );
    }
}

/// A `pve2mqtt.toml` shipped for compose, loaded the way the container loads it: the
/// token file the Docker secret provides is swapped for a local file of the same content.
fn load_compose_config(relative: &str, token_file: &Path) -> Config {
    let env = HashMap::from([(
        "PVE2MQTT_PROXMOX__TOKEN_FILE".to_owned(),
        token_file.to_string_lossy().into_owned(),
    )]);
    Config::load_with_env(Some(&repo_path(relative)), &env)
        .unwrap_or_else(|error| panic!("{relative} does not load: {error}"))
}

/// Values of `key: value` lines within the named service of compose.yml.
fn compose_service(compose: &str, service: &str) -> String {
    let header = format!("\n  {service}:\n");
    let start = compose
        .find(&header)
        .unwrap_or_else(|| panic!("compose.yml has no service {service}"));
    let body = &compose[start + header.len()..];
    let end = body
        .lines()
        .position(|line| {
            !line.is_empty() && !line.starts_with("    ") && !line.trim_start().starts_with('#')
        })
        .unwrap_or(usize::MAX);
    body.lines().take(end).collect::<Vec<_>>().join("\n")
}

#[test]
fn compose_configs_load_and_only_the_demo_skips_tls_verification() {
    let compose = read("docker/compose.yml");
    let dir = temp_dir();

    // The real bridge: config mounted where the image's CMD reads it, token as a secret
    let bridge = compose_service(&compose, "pve2mqtt");
    assert!(bridge.contains(&format!("./config/pve2mqtt.toml:{CONTAINER_CONFIG}:ro")));
    assert!(bridge.contains("- pve_token"));
    assert!(bridge.contains("profiles: [\"bridge\"]"));
    assert!(
        compose.contains("context: .."),
        "the build context is the repository root"
    );
    assert!(compose.contains("dockerfile: docker/Dockerfile"));
    assert!(compose.contains("file: ./secrets/pve_token"));
    let token_file = dir.path().join("pve_token");
    write(&token_file, &format!("{TOKEN}\n"));
    let real = load_compose_config("docker/config/pve2mqtt.toml", &token_file);
    assert!(
        real.clusters[0].tls_verify,
        "the real config must verify TLS"
    );
    assert_eq!(
        real.mqtt.host, "mosquitto",
        "the broker is the compose service"
    );
    assert!(read("docker/config/pve2mqtt.toml").contains("token_file = \"/run/secrets/pve_token\""));

    // The demo: the simulator's --token is the demo secret the bridge reads
    let demo = compose_service(&compose, "pve2mqtt-demo");
    assert!(demo.contains(&format!("./config/demo.toml:{CONTAINER_CONFIG}:ro")));
    assert!(demo.contains("- demo_token"));
    let sim = compose_service(&compose, "pve-sim");
    let command_line = sim
        .lines()
        .find_map(|line| line.trim().strip_prefix("command: "))
        .unwrap_or_else(|| panic!("pve-sim has no command"));
    let command: Vec<String> = serde_json::from_str(command_line)
        .unwrap_or_else(|error| panic!("pve-sim command is not a flow list: {error}"));
    assert_eq!(command[..4], ["sim", "--listen", "0.0.0.0:8006", "--tls"]);
    let sim_token = command
        .iter()
        .position(|arg| arg == "--token")
        .and_then(|index| command.get(index + 1))
        .unwrap_or_else(|| panic!("pve-sim is started without --token"));
    assert_eq!(read("docker/secrets/demo_token").trim(), sim_token);
    let demo_config = load_compose_config(
        "docker/config/demo.toml",
        &repo_path("docker/secrets/demo_token"),
    );
    assert_eq!(demo_config.clusters[0].urls, ["https://pve-sim:8006"]);
    assert!(!demo_config.clusters[0].tls_verify);

    // tls_verify = false appears in the demo config only, under its warning
    for entry in std::fs::read_dir(repo_path("docker/config"))
        .unwrap_or_else(|error| panic!("cannot list docker/config: {error}"))
    {
        let path = entry
            .unwrap_or_else(|error| panic!("cannot list docker/config: {error}"))
            .path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let disables = text
            .lines()
            .any(|line| line.trim().replace(' ', "") == "tls_verify=false");
        let is_demo = path.file_name().is_some_and(|name| name == "demo.toml");
        assert_eq!(disables, is_demo, "{}: tls_verify = false", path.display());
        if is_demo {
            assert!(
                text.contains("DEMO ONLY"),
                "the demo's tls_verify needs its warning"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The systemd unit and INSTALL.md
// ---------------------------------------------------------------------------------------

const UNIT: &str = "packaging/systemd/pve2mqtt.service";

/// `Key=value` settings of the unit, in order (a key may repeat).
fn unit_settings() -> Vec<(String, String)> {
    read(UNIT)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{UNIT}: not a setting: {line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn unit_values(settings: &[(String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// LoadCredential=ID:PATH, as (id, path).
fn unit_credentials(settings: &[(String, String)]) -> BTreeMap<String, String> {
    unit_values(settings, "LoadCredential")
        .into_iter()
        .map(|value| {
            let (id, path) = value
                .split_once(':')
                .unwrap_or_else(|| panic!("LoadCredential={value} lacks ID:PATH"));
            (id.to_owned(), path.to_owned())
        })
        .collect()
}

#[test]
fn systemd_unit_and_install_guide_name_the_same_paths() {
    let settings = unit_settings();
    let install = read("packaging/INSTALL.md");
    let credentials = unit_credentials(&settings);

    let config_path = "/etc/pve2mqtt/pve2mqtt.toml";
    assert!(
        credentials.values().any(|path| path == config_path),
        "the unit must load the config from {config_path}: {credentials:?}"
    );
    for path in credentials.values() {
        assert!(
            install.contains(path.as_str()),
            "INSTALL.md never mentions {path}"
        );
    }
    let exec_start = unit_values(&settings, "ExecStart");
    assert_eq!(exec_start.len(), 1);
    let binary = exec_start[0]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(binary, "/usr/local/bin/pve2mqtt");
    assert!(install.contains(&format!("install -m 0755 target/release/pve2mqtt {binary}")));
    assert!(
        install.contains("packaging/systemd/pve2mqtt.service /etc/systemd/system/pve2mqtt.service")
    );
    // Every pveum role in the guide carries the privileges the brief and `check` expect.
    for privileges in [
        "\"Sys.Audit VM.Audit Datastore.Audit\"",
        "\"Sys.Audit VM.Audit Datastore.Audit VM.PowerMgmt\"",
        "\"Sys.Audit VM.Audit Datastore.Audit VM.PowerMgmt VM.Backup Datastore.AllocateSpace\"",
    ] {
        assert!(
            install.contains(privileges),
            "INSTALL.md lacks a role with {privileges}"
        );
    }
    assert!(install.contains("pveum user token add pve2mqtt@pve bridge --privsep 1"));

    // Exit code 2 (bad config) is not restarted; other failures are.
    assert_eq!(unit_values(&settings, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&settings, "RestartPreventExitStatus"), ["2"]);
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit_values(&settings, key), [value], "{UNIT}: {key}");
    }
    assert!(unit_values(&settings, "SystemCallFilter").contains(&"@system-service".to_owned()));
}

#[test]
fn systemd_unit_environment_loads_the_install_guide_config() {
    // Given the credentials directory systemd would create: each LoadCredential file under
    // its id, with the config being INSTALL.md's example
    let settings = unit_settings();
    let credentials_dir = temp_dir();
    let install = read("packaging/INSTALL.md");
    let example = install
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("INSTALL.md has no ```toml example"));
    let ca_file = credentials_dir.path().join("ca.pem");
    write(&ca_file, TEST_CA_PEM);
    for (id, source) in unit_credentials(&settings) {
        let contents = match source.as_str() {
            "/etc/pve2mqtt/pve2mqtt.toml" => example.to_owned(),
            "/etc/pve2mqtt/pve-token" => format!("{TOKEN}\n"),
            other => panic!("unexpected credential source {other}"),
        };
        write(&credentials_dir.path().join(id), &contents);
    }
    let expand = |value: &str| value.replace("%d", &credentials_dir.path().to_string_lossy());

    // When pve2mqtt starts with the unit's Environment= and ExecStart --config
    let mut env: HashMap<String, String> = unit_values(&settings, "Environment")
        .iter()
        .filter_map(|assignment| assignment.split_once('='))
        .filter(|(name, _)| name.starts_with("PVE2MQTT_"))
        .map(|(name, value)| (name.to_owned(), expand(value)))
        .collect();
    assert!(env.contains_key("PVE2MQTT_PROXMOX__TOKEN_FILE"));
    // The example's ca_file points into /etc; the test's copy stands in for it.
    env.insert(
        "PVE2MQTT_PROXMOX__CA_FILE".into(),
        ca_file.to_string_lossy().into_owned(),
    );
    let exec_start = &unit_values(&settings, "ExecStart")[0];
    let config_arg = exec_start
        .split_whitespace()
        .skip_while(|word| *word != "--config")
        .nth(1)
        .unwrap_or_else(|| panic!("ExecStart has no --config"));
    let config = Config::load_with_env(Some(Path::new(&expand(config_arg))), &env)
        .unwrap_or_else(|error| panic!("the unit's environment does not load: {error}"));

    // Then the token comes from the credential, and the example's settings hold
    assert_eq!(config.clusters[0].token.id(), "pve2mqtt@pve!bridge");
    assert_eq!(
        config.clusters[0].ca_file.as_deref(),
        Some(ca_file.as_path())
    );
    assert_eq!(config.mqtt.username.as_deref(), Some("pve2mqtt"));
    assert!(config.commands.allow.is_empty());
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart's binary exists; point it at the one cargo just built,
    // under the unit's own file name.
    let dir = temp_dir();
    let unit_file = dir.path().join("pve2mqtt.service");
    write(
        &unit_file,
        &read(UNIT).replace("/usr/local/bin/pve2mqtt", env!("CARGO_BIN_EXE_pve2mqtt")),
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file)
        .output()
        .unwrap_or_else(|error| panic!("cannot run systemd-analyze: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // verify reports unknown keys and unparsable values on stderr with exit code 0, so
    // any line about our unit fails the test.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("pve2mqtt.service"))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn debian_unit_is_the_hardened_unit_with_the_package_user_and_path() {
    // The package's unit differs from packaging/systemd/'s in exactly these settings:
    // /usr/bin instead of /usr/local/bin, and the static user postinst makes instead of
    // DynamicUser. Everything else (hardening, credentials, restarts) stays the same.
    let settings = |relative: &str| -> Vec<String> {
        read(relative)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                line.replace("/usr/local/bin/pve2mqtt", "/usr/bin/pve2mqtt")
                    .replace("DynamicUser=yes", "User=pve2mqtt\nGroup=pve2mqtt")
            })
            .collect()
    };
    assert_eq!(
        settings(UNIT).join("\n"),
        settings("packaging/debian/pve2mqtt.service").join("\n")
    );
    let postinst = read("packaging/debian/postinst");
    assert!(postinst.contains("adduser --system --group") && postinst.contains("#DEBHELPER#"));
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("[package.metadata.deb]"));
    assert!(manifest
        .contains("systemd-units = { unit-name = \"pve2mqtt\", enable = false, start = false }"));
}
