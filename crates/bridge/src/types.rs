//! Value types shared by the configuration, the MQTT commands and the Proxmox client, so
//! all apply one rule.
//!
//! It is a top-level module (not `pve::params`) because it depends on nothing in the crate:
//! `config` uses it for the `[backup]` defaults and the `ca_file` keys, `command` for the
//! options of a backup command, `pve::tls` and `mqtt` for the trust roots, and none of them
//! has to import another to get these rules.
use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

/// vzdump's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupMode {
    Snapshot,
    Suspend,
    Stop,
}

impl BackupMode {
    pub const CHOICES: &'static str = "snapshot, suspend, stop";

    /// Case-insensitive, surrounding spaces ignored; `None` for anything else.
    pub fn parse(text: &str) -> Option<BackupMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "snapshot" => Some(BackupMode::Snapshot),
            "suspend" => Some(BackupMode::Suspend),
            "stop" => Some(BackupMode::Stop),
            _ => None,
        }
    }

    /// The form field value Proxmox expects.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Snapshot => "snapshot",
            BackupMode::Suspend => "suspend",
            BackupMode::Stop => "stop",
        }
    }
}

/// vzdump's `compress`: `0` (none), `1` (Proxmox's default, lzo), or a named compressor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    None,
    Default,
    Gzip,
    Lzo,
    Zstd,
}

impl Compress {
    pub const CHOICES: &'static str = "0, 1, gzip, lzo, zstd";

    /// Case-insensitive, surrounding spaces ignored; `None` for anything else.
    pub fn parse(text: &str) -> Option<Compress> {
        match text.trim().to_ascii_lowercase().as_str() {
            "0" => Some(Compress::None),
            "1" => Some(Compress::Default),
            "gzip" => Some(Compress::Gzip),
            "lzo" => Some(Compress::Lzo),
            "zstd" => Some(Compress::Zstd),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compress::None => "0",
            Compress::Default => "1",
            Compress::Gzip => "gzip",
            Compress::Lzo => "lzo",
            Compress::Zstd => "zstd",
        }
    }
}

/// A Proxmox storage id (`pve-storage-id`: `(?i)[a-z][a-z0-9\-_.]*[a-z0-9]`), at most 64
/// characters. Checked before a backup is asked for, so a typo gets a clear answer instead of
/// a Proxmox 400, and a path like `../etc` never reaches a URL or form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageId(String);

impl StorageId {
    pub const RULE: &'static str =
        "a letter, then letters, digits, `-`, `_` or `.`, ending in a letter or digit";

    /// Surrounding spaces are ignored; `None` when the rest breaks the rule.
    pub fn parse(text: &str) -> Option<StorageId> {
        let text = text.trim();
        let bytes = text.as_bytes();
        let valid = (2..=64).contains(&bytes.len())
            && bytes[0].is_ascii_alphabetic()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        valid.then(|| StorageId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shown as Proxmox writes it (`check`'s report, log lines).
impl fmt::Display for BackupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Compress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compared with the text Proxmox uses (`config.backup.mode == "stop"` in tests).
impl PartialEq<&str> for BackupMode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for Compress {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for StorageId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A Proxmox API base URL, `https://host:8006`, without a trailing `/`. The bridge appends
/// `/api2/json` itself, so a pasted API path is refused with that explanation rather than
/// doubled; a user or password in it is refused without echoing the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxmoxUrl(String);

impl ProxmoxUrl {
    /// The reason for a refusal never quotes a URL holding `@` (it may hold a password).
    pub fn parse(text: &str) -> Result<ProxmoxUrl, String> {
        let text = text.trim();
        let example = "e.g. https://pve.example.lan:8006";
        let url = parse_url(text, example)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the URL must start with https:// (or http://), {example}"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
            "the URL must not contain a user name or password; the API token goes in proxmox.token"
                .into(),
        );
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("the URL has no host, {example}"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "the URL must not have a query or fragment, {example}"
            ));
        }
        let path = url.path();
        if path != "/" && !path.is_empty() {
            return Err(if path.contains("api2") {
                format!(
                "give the base URL without `{path}`: pve2mqtt adds /api2/json itself ({example})"
            )
            } else {
                format!("the URL must not have a path (got `{path}`), {example}")
            });
        }
        Ok(ProxmoxUrl(url.as_str().trim_end_matches('/').to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<ProxmoxUrl> for String {
    fn from(url: ProxmoxUrl) -> String {
        url.0
    }
}

impl fmt::Display for ProxmoxUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for ProxmoxUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Parses a configured URL. The refusal quotes the text only when it holds no `@`: what
/// follows a user name there may be a password.
pub(crate) fn parse_url(text: &str, example: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(text).map_err(|error| {
        if text.contains('@') {
            format!("not a valid URL ({error}); {example}")
        } else {
            format!("`{text}` is not a valid URL ({error}); {example}")
        }
    })
}

/// One broker endpoint of `mqtt.url` / `mqtt.urls`: `mqtt://host[:1883]` or
/// `mqtts://host[:8883]`, without credentials, path, query or fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttBroker {
    /// As written, for messages.
    pub url: String,
    /// Without IPv6 brackets, as socket APIs want it.
    pub host: String,
    pub port: u16,
    /// `mqtts://`
    pub tls: bool,
}

impl MqttBroker {
    pub fn parse(text: &str) -> Result<MqttBroker, String> {
        let example = "e.g. mqtt://127.0.0.1:1883 or mqtts://broker.lan:8883";
        let url = text.trim().to_owned();
        let parsed = parse_url(&url, example)?;
        let (tls, default_port) = match parsed.scheme() {
            "mqtt" => (false, 1883),
            "mqtts" => (true, 8883),
            other => {
                return Err(format!(
                    "the scheme must be mqtt:// or mqtts:// (TLS), got `{other}://`; {example}"
                ))
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(
                "the URL must not contain credentials; use mqtt.username and mqtt.password".into(),
            );
        }
        // `host_str` writes an IPv6 address in brackets, as in the URL.
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(format!("the URL has no host; {example}")),
        }
        .to_owned();
        if parsed.query().is_some()
            || parsed.fragment().is_some()
            || !matches!(parsed.path(), "" | "/")
        {
            return Err(format!(
                "the URL must not have a path, query or fragment; {example}"
            ));
        }
        match parsed.port().unwrap_or(default_port) {
            0 => Err("the port must be between 1 and 65535".into()),
            port => Ok(MqttBroker {
                url,
                host,
                port,
                tls,
            }),
        }
    }
}

/// A `commands.allow` entry: which guests MQTT commands may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    Vmid(u32),
    Tag(String),
    Pool(String),
}

impl AllowRule {
    /// A vmid (100 to 999999999), `tag:NAME` or `pool:NAME`.
    pub fn parse(text: &str) -> Result<AllowRule, String> {
        let shape = "expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`";
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            let number = text.parse::<i128>().unwrap_or(i128::MAX);
            return match u32::try_from(number) {
                Ok(vmid) if (100..=999_999_999).contains(&vmid) => Ok(AllowRule::Vmid(vmid)),
                _ => Err(format!("entry `{number}`: {shape}")),
            };
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!("entry `{text}`: {shape}"));
        };
        let name = name.trim();
        let name_ok = !name.is_empty()
            && !name.contains(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'));
        match kind.trim().to_ascii_lowercase().as_str() {
            "tag" if name_ok => Ok(AllowRule::Tag(name.to_owned())),
            "pool" if name_ok => Ok(AllowRule::Pool(name.to_owned())),
            "tag" | "pool" => Err(format!(
                "entry `{text}`: the name after `{kind}:` must be non-empty, without spaces, `,`, `;` or `:`"
            )),
            _ => Err(format!("entry `{text}`: {shape}")),
        }
    }
}

impl fmt::Display for AllowRule {
    /// The form the rule is written in the config (`100`, `tag:NAME`, `pool:NAME`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowRule::Vmid(vmid) => write!(f, "{vmid}"),
            AllowRule::Tag(tag) => write!(f, "tag:{tag}"),
            AllowRule::Pool(pool) => write!(f, "pool:{pool}"),
        }
    }
}

pub const TOKEN_SHAPE: &str =
    "expected USER@REALM!TOKENID=SECRET, e.g. pve2mqtt@pve!bridge=xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

/// A secret string (API token secret, MQTT password). Its `Debug` and `Display`
/// never show the value, so it cannot leak through logs or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The clear value: call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Proxmox API token `USER@REALM!TOKENID=SECRET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// `USER@REALM`, e.g. `pve2mqtt@pve`.
    pub user: String,
    /// The token id after `!`, e.g. `bridge`.
    pub token_id: String,
    pub secret: Secret,
}

impl ApiToken {
    /// `USER@REALM!TOKENID=SECRET`. Reasons describe the expected shape and never echo the value
    /// (any part of it might be the secret, pasted in the wrong place).
    pub fn parse(text: &str) -> Result<ApiToken, String> {
        let text = text.trim();
        // `get` rather than slicing: the text may be non-ASCII, and a slice could split a char.
        if text
            .get(.."PVEAPIToken=".len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("PVEAPIToken="))
        {
            return Err(format!(
                "{TOKEN_SHAPE}; drop the `PVEAPIToken=` prefix, that is the HTTP header form \
                 (value not shown)"
            ));
        }
        let Some((user, rest)) = text.split_once('!') else {
            return Err(format!(
                "{TOKEN_SHAPE}; the `!TOKENID` part is missing (value not shown; a secret alone is \
                 not enough, Proxmox needs the user and token id too)"
            ));
        };
        let Some((token_id, secret)) = rest.split_once('=') else {
            return Err(format!(
                "{TOKEN_SHAPE}; the `=SECRET` part is missing (value not shown)"
            ));
        };
        let user_ok = user.split_once('@').is_some_and(|(name, realm)| {
            !name.is_empty()
                && !realm.is_empty()
                && !name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
                && realm
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
        if !user_ok {
            return Err(format!(
                "{TOKEN_SHAPE}; the part before `!` must be USER@REALM (value not shown)"
            ));
        }
        if token_id.is_empty()
            || !token_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "{TOKEN_SHAPE}; the token id between `!` and `=` may only hold letters, digits, \
                 `.`, `-` and `_` (value not shown)"
            ));
        }
        if secret.is_empty() || secret.contains(char::is_whitespace) {
            return Err(format!(
                "{TOKEN_SHAPE}; the secret after `=` is empty or contains spaces (value not shown)"
            ));
        }
        Ok(ApiToken {
            user: user.to_owned(),
            token_id: token_id.to_owned(),
            secret: Secret::new(secret),
        })
    }

    /// The value of the `Authorization` header.
    pub fn header_value(&self) -> String {
        format!(
            "PVEAPIToken={}!{}={}",
            self.user,
            self.token_id,
            self.secret.expose()
        )
    }
    /// `USER@REALM!TOKENID`, safe to log.
    pub fn id(&self) -> String {
        format!("{}!{}", self.user, self.token_id)
    }
}

/// `AB:CD:…`, the form the Proxmox GUI and `pvenode cert info` show a certificate's SHA-256.
pub fn format_fingerprint(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The inverse of [`format_fingerprint`]: 64 hex digits, or 32 colon-separated pairs, any case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let expected = "expected the certificate's SHA-256 fingerprint: 32 bytes as hex, \
                    like AB:CD:EF:… (64 hex digits, with or without `:`)";
    let pairs: Vec<&str> = if text.contains(':') {
        text.split(':').collect()
    } else if text.len() % 2 == 0 && text.is_ascii() {
        (0..text.len())
            .step_by(2)
            .map(|i| &text[i..i + 2])
            .collect()
    } else {
        return Err(format!("{expected}, got `{text}`"));
    };
    if pairs.len() != 32 {
        return Err(format!("{expected}; got {} bytes in `{text}`", pairs.len()));
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(&pairs) {
        *byte = (pair.len() == 2)
            .then(|| u8::from_str_radix(pair, 16).ok())
            .flatten()
            .ok_or_else(|| format!("{expected}, got `{text}`"))?;
    }
    Ok(bytes)
}

/// The certificates of a PEM CA file (`ca_file` keys), read and parsed once at start-up so a
/// wrong path or a key file given by mistake fails there, naming the key, instead of in a TLS
/// handshake later. Dereferences to the file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaBundle {
    /// The key it was given as (`mqtt.ca_file`, `PVE2MQTT_PROXMOX__CA_FILE`), for messages.
    key: String,
    path: PathBuf,
    certificates: Vec<CertificateDer<'static>>,
}

/// Why a CA file cannot be used; the message names the file, the caller adds the key.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum CaError {
    #[error("it is a directory, expected a PEM file")]
    Directory,
    #[error("{0}")]
    Unreadable(String),
    #[error("not valid PEM: {0}")]
    NotPem(String),
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in it")]
    NoCertificate,
}

impl CaBundle {
    /// Reads every certificate in the PEM file at `path`.
    pub fn read(key: impl Into<String>, path: impl Into<PathBuf>) -> Result<CaBundle, CaError> {
        let path = path.into();
        if path.is_dir() {
            return Err(CaError::Directory);
        }
        let pem = std::fs::read(&path).map_err(|e| CaError::Unreadable(e.to_string()))?;
        let certificates = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::NotPem(e.to_string()))?;
        if certificates.is_empty() {
            return Err(CaError::NoCertificate);
        }
        Ok(CaBundle {
            key: key.into(),
            path,
            certificates,
        })
    }

    /// Adds the certificates to `roots`; the error names the key and the file.
    pub fn add_to(&self, roots: &mut rustls::RootCertStore) -> Result<(), String> {
        for certificate in &self.certificates {
            roots.add(certificate.clone()).map_err(|e| {
                format!(
                    "{}: unusable certificate in `{}`: {e}",
                    self.key,
                    self.path.display()
                )
            })?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for CaBundle {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn storage_ids_follow_the_proxmox_rule() {
        for good in ["local", "pbs-01", "nfs_backup.2", "Local-LVM"] {
            assert_eq!(StorageId::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "l",
            "1local",
            "my store",
            "../etc",
            "local-",
            "a/b",
            &"a".repeat(65),
        ] {
            assert_eq!(StorageId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn modes_and_compressors_are_read_in_any_case_and_written_as_proxmox_wants() {
        assert_eq!(
            BackupMode::parse(" Stop ").map(BackupMode::as_str),
            Some("stop")
        );
        assert_eq!(BackupMode::parse("fast"), None);
        assert_eq!(Compress::parse("ZSTD").map(Compress::as_str), Some("zstd"));
        assert_eq!(Compress::parse("0"), Some(Compress::None));
        assert_eq!(Compress::parse("xz"), None);
    }

    #[test]
    fn a_ca_file_is_refused_when_missing_a_directory_or_without_certificates() {
        let missing = CaBundle::read("ca_file", "/nonexistent/pve-root-ca.pem").unwrap_err();
        assert!(matches!(missing, CaError::Unreadable(_)), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CaBundle::read("ca_file", dir.path()),
            Err(CaError::Directory)
        );
        let mut key = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
        )
        .unwrap();
        assert_eq!(
            CaBundle::read("ca_file", key.path()),
            Err(CaError::NoCertificate)
        );
    }
}
