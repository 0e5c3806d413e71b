//! Value parsers. They return a reason without the key; the caller adds the key, and no
//! reason quotes a secret.
use super::AllowRule;

/// One item of a list value.
pub(super) enum ListItem {
    Text(String),
    Integer(i64),
}

/// `mqtt://host[:1883]` or `mqtts://host[:8883]` -> (host, port, tls). The host is returned
/// without IPv6 brackets, as socket APIs want it.
pub(super) fn parse_mqtt_url(text: &str) -> Result<(String, u16, bool), String> {
    let example = "e.g. mqtt://127.0.0.1:1883 or mqtts://broker.lan:8883";
    let url = crate::types::parse_url(text, example)?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => {
            return Err(format!(
                "the scheme must be mqtt:// or mqtts:// (TLS), got `{other}://`; {example}"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL must not contain credentials; use mqtt.username and mqtt.password".into(),
        );
    }
    // `host_str` writes an IPv6 address in brackets, as in the URL.
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(format!("the URL has no host; {example}")),
    }
    .to_owned();
    if url.query().is_some() || url.fragment().is_some() || !matches!(url.path(), "" | "/") {
        return Err(format!(
            "the URL must not have a path, query or fragment; {example}"
        ));
    }
    let port = url.port().unwrap_or(default_port);
    if port == 0 {
        return Err("the port must be between 1 and 65535".into());
    }
    Ok((host, port, tls))
}

/// SHA-256 as 64 hex digits, or 32 colon-separated pairs (`AB:CD:…`), any case.
pub(super) fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
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
        if pair.len() != 2 {
            return Err(format!("{expected}, got `{text}`"));
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("{expected}, got `{text}`"))?;
    }
    Ok(bytes)
}

/// The cluster id goes into MQTT topics and Home Assistant unique ids, where `/`, `+`, `#`
/// and spaces would break things.
pub(super) fn check_cluster_name(name: &str) -> Result<(), String> {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` may only contain letters, digits, `_` and `-` (it becomes part of MQTT \
             topics and Home Assistant ids)"
        ))
    }
}

/// A topic prefix we publish under: wildcards and NUL are illegal in published topics, and
/// empty levels from a stray `/` would make topics nobody subscribes to.
pub(super) fn check_topic_root(topic: &str) -> Result<(), String> {
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` must not contain the MQTT wildcards `+` or `#`"
        ));
    }
    if topic.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    if topic.starts_with('/') || topic.ends_with('/') {
        return Err(format!("`{topic}` must not start or end with `/`"));
    }
    if topic.contains("//") {
        return Err(format!("`{topic}` must not contain an empty level (`//`)"));
    }
    Ok(())
}

pub(super) fn parse_allow_rule(item: ListItem) -> Result<AllowRule, String> {
    let shape = "expected a vmid (100 to 999999999), `tag:NAME` or `pool:NAME`";
    let text = match item {
        ListItem::Integer(number) => return vmid_rule(i128::from(number), shape),
        ListItem::Text(text) => text,
    };
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        let number = text.parse::<i128>().unwrap_or(i128::MAX);
        return vmid_rule(number, shape);
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

fn vmid_rule(number: i128, shape: &str) -> Result<AllowRule, String> {
    match u32::try_from(number) {
        Ok(vmid) if (100..=999_999_999).contains(&vmid) => Ok(AllowRule::Vmid(vmid)),
        _ => Err(format!("entry `{number}`: {shape}")),
    }
}
