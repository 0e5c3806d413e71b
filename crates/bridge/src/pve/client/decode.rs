//! Reading Proxmox's JSON answers: the `{"data": …}` envelope with errors that name the
//! endpoint and the JSON path, and the row-by-row decoder of `GET /cluster/resources` the
//! fast lane uses.
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::pve::error::PveError;
use crate::pve::types::Resource;

/// Decodes a `GET /cluster/resources` answer exactly as the fast lane does; public so the
/// `poll_cost` benchmark measures the real decoder.
pub fn decode_cluster_resources(body: &[u8]) -> Result<Vec<Resource>, PveError> {
    decode_data("GET /cluster/resources", body)
}

/// Decodes a `GET /cluster/resources` answer one row at a time, handing each row to
/// `each_row`, and returns how many rows there were. At 5,000 guests a `Vec<Resource>`
/// is ~4 MB (more while it doubles), allocated and freed on every poll; one row at a
/// time, the fast lane's transient memory is the body and one row.
///
/// On malformed input `each_row` may already have seen the rows before the fault: the
/// caller must discard what it built. The error is the one [`decode_cluster_resources`]
/// gives (endpoint and JSON path).
pub fn for_each_cluster_resource(
    body: &[u8],
    mut each_row: impl FnMut(Resource),
) -> Result<usize, PveError> {
    for_each_cluster_row(body, |row| {
        each_row(row.decode()?);
        Ok(())
    })
}

/// Like [`for_each_cluster_resource`], but hands each row undecoded: its JSON text, a
/// hash of it, and [`RawRow::decode`]. The fast lane decodes only the rows that changed
/// since the last poll (`model::RowMemo`): on a poll between two of pvestatd's
/// broadcasts, none. An error `each_row` returns (a row that does not decode) fails the
/// whole answer, with the error [`decode_cluster_resources`] gives.
pub fn for_each_cluster_row(
    body: &[u8],
    mut each_row: impl FnMut(RawRow<'_>) -> Result<(), serde_json::Error>,
) -> Result<usize, PveError> {
    let text = std::str::from_utf8(body).ok();
    // Proxmox's shape, `{"data":[{…},…]}`: its rows are found by a plain scan, far
    // cheaper than serde_json's (which validates every byte; a row is validated when it
    // is decoded, and a row is reused only when its members are the ones of a row
    // decoded before, so it is valid JSON too).
    if let Some((text, rows)) = text.and_then(|text| Some((text, split_rows(text)?))) {
        for (at, (start, end)) in rows.iter().enumerate() {
            let row = RawRow {
                text: &text[*start as usize..*end as usize],
            };
            if each_row(row).is_err() {
                // The error names the row and the field.
                return Err(decode_cluster_resources(body).err().unwrap_or_else(|| {
                    PveError::Decode {
                        endpoint: "GET /cluster/resources".to_owned(),
                        message: format!("row {at} could not be read"),
                    }
                }));
            }
        }
        return Ok(rows.len());
    }
    let streamed = text.and_then(|text| {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let rows = serde::de::DeserializeSeed::deserialize(
            RowStream::Envelope(&mut each_row),
            &mut deserializer,
        )
        .ok()?;
        deserializer.end().ok()?;
        Some(rows)
    });
    match streamed {
        Some(rows) => Ok(rows),
        // Decode again, the slow way, for an error that names the field. (Should that
        // succeed where streaming failed, the rows seen are still incomplete: an error.)
        None => Err(decode_cluster_resources(body)
            .err()
            .unwrap_or_else(|| PveError::Decode {
                endpoint: "GET /cluster/resources".to_owned(),
                message: "the answer could not be read row by row".to_owned(),
            })),
    }
}

/// Where each row of `{"data":[{…},…]}` is (byte ranges of `text`), if `text` has exactly
/// that shape, with any JSON whitespace: one key `data`, a list of objects. `None` for
/// anything else (other keys, rows that are not objects, malformed text), which the serde
/// path then reads. Only the structure is checked here: strings (with their escapes) are
/// skipped, brackets counted; the inside of a row is validated when it is decoded.
fn split_rows(text: &str) -> Option<Vec<(u32, u32)>> {
    let bytes = text.as_bytes();
    u32::try_from(bytes.len()).ok()?;
    let mut at = 0;
    let skip_ws = |at: &mut usize| {
        while bytes
            .get(*at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            *at += 1;
        }
    };
    let expect = |at: &mut usize, token: &[u8]| -> Option<()> {
        skip_ws(at);
        bytes.get(*at..*at + token.len()).filter(|t| *t == token)?;
        *at += token.len();
        Some(())
    };
    expect(&mut at, b"{")?;
    expect(&mut at, br#""data""#)?;
    expect(&mut at, b":")?;
    expect(&mut at, b"[")?;
    let mut rows = Vec::new();
    skip_ws(&mut at);
    if bytes.get(at) == Some(&b']') {
        at += 1;
    } else {
        loop {
            skip_ws(&mut at);
            if bytes.get(at) != Some(&b'{') {
                return None;
            }
            let start = at;
            at = object_end(bytes, at)?;
            rows.push((start as u32, at as u32));
            skip_ws(&mut at);
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b']') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    expect(&mut at, b"}")?;
    skip_ws(&mut at);
    (at == bytes.len()).then_some(rows)
}

/// The end (one past the closing brace) of the object that starts at `start`: braces
/// counted, strings skipped with their escapes, each found by a SIMD search (`memchr`)
/// rather than byte by byte (the byte loop was ~7 % of the bridge's CPU in the moving
/// world at 5,000 guests). Square brackets are not counted: in an object that is JSON they
/// pair up inside it, and every row is read as JSON before it is used (serde, the guest
/// scan, or the memory of the very bytes read before), so a row whose brackets do not
/// pair fails there as it did.
fn object_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = start;
    loop {
        at += memchr::memchr3(b'"', b'{', b'}', bytes.get(at..)?)?;
        match bytes[at] {
            b'"' => {
                at += 1;
                loop {
                    at += memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
                    if bytes[at] == b'"' {
                        break;
                    }
                    at += 2;
                }
            }
            b'{' => depth += 1,
            _ => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
        }
        at += 1;
    }
}

/// One row of `/cluster/resources` as Proxmox sent it, not decoded yet.
#[derive(Clone, Copy, Debug)]
pub struct RawRow<'a> {
    text: &'a str,
}

impl<'a> RawRow<'a> {
    /// A row from its JSON text (tests and benchmarks).
    pub fn new(text: &'a str) -> Self {
        RawRow { text }
    }

    /// The row's JSON text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// A 64-bit hash of the row's members, whatever their order, keyed per process.
    /// Proxmox writes the keys of each row in Perl hash order, another one on every call
    /// (`reference/pve-api.md` §2), so the same row comes in other bytes from one poll to
    /// the next. The hash is the sum of [`row_hash`] over the row's `"key":value`
    /// members, mixed with their number: the same members in any order give the same
    /// hash, and two rows share one only when they have the same members (up to a chance
    /// of about 2^-64). A row with a nested object or array, or one that is not an
    /// object, is hashed byte for byte.
    pub fn hash(&self) -> u64 {
        let bytes = self.text.as_bytes();
        members_hash(bytes).unwrap_or_else(|| row_hash(bytes))
    }

    /// The row, decoded as [`decode_cluster_resources`] decodes it.
    pub fn decode(&self) -> Result<Resource, serde_json::Error> {
        serde_json::from_str(self.text)
    }
}

/// A fast 64-bit hash of a row's bytes (~0.4 KB), or of a whole answer (~1.6 MB at 5,000
/// guests), to tell one that changed from one that did not. Each 16 bytes go through one
/// folded 128-bit multiply (the mixing of wyhash and foldhash), in four independent lanes
/// of 64 bytes so that the multiplies overlap instead of waiting on each other: a moving
/// poll hashes every byte of the answer twice (the answer, then each row). Keyed by
/// random per-process keys, so that no row can be made to collide with another on
/// purpose (a multiply by zero, which would forget what came before, needs the key).
/// Two different rows of one guest share a hash with a probability of about 2^-64.
pub fn row_hash(bytes: &[u8]) -> u64 {
    fn word(bytes: &[u8], at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    }
    let keys = row_hash_keys();
    let mut h = keys[4] ^ (bytes.len() as u64).wrapping_mul(keys[0]);
    let mut blocks = bytes.chunks_exact(64);
    if bytes.len() >= 64 {
        let mut lanes = [h, h ^ keys[1], h ^ keys[2], h ^ keys[3]];
        for block in &mut blocks {
            for (lane, (state, key)) in lanes.iter_mut().zip(keys).enumerate() {
                let at = lane * 16;
                *state = fold(word(block, at) ^ key, word(block, at + 8) ^ *state);
            }
        }
        h = fold(lanes[0] ^ lanes[2], lanes[1] ^ lanes[3] ^ keys[0]);
    }
    let mut pairs = blocks.remainder().chunks_exact(16);
    for pair in &mut pairs {
        h = fold(word(pair, 0) ^ keys[1], word(pair, 8) ^ h);
    }
    let mut tail = [0u8; 16];
    tail[..pairs.remainder().len()].copy_from_slice(pairs.remainder());
    h = fold(word(&tail, 0) ^ keys[2], word(&tail, 8) ^ h);
    fold(h, keys[3] ^ keys[4])
}

/// The per-process keys of [`row_hash`], from the standard library's random hasher keys.
/// One folded 128-bit multiply (see [`row_hash`]).
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// [`RawRow::hash`] of a flat object (`{"key":value,…}` without nested values or
/// escapes: a guest row of Proxmox's); `None` for any other text. Members are split at
/// the commas outside strings, found 64 bytes at a time as bit masks (simdjson's way:
/// with no escapes, a byte is inside a string when an odd number of quotes comes before
/// it). A byte at a time this cost ~3 ms per 5,000 rows, more than decoding the rows
/// that changed.
fn members_hash(bytes: &[u8]) -> Option<u64> {
    /// Bit `i` is the parity of bits `0..=i`.
    fn prefix_xor(mut bits: u64) -> u64 {
        for shift in [1, 2, 4, 8, 16, 32] {
            bits ^= bits << shift;
        }
        bits
    }
    let inner = bytes.strip_prefix(b"{")?.strip_suffix(b"}")?;
    let keys = row_hash_keys();
    let (mut sum, mut members) = (0u64, 1u64);
    let mut start = 0usize;
    // All ones while the last block ended inside a string.
    let mut carry = 0u64;
    let mut blocks = inner.chunks_exact(64);
    let mut tail = [b' '; 64];
    tail[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
    let mut at = 0usize;
    while let Some(block) = blocks
        .next()
        .or_else(|| (at < inner.len()).then_some(&tail[..]))
    {
        let block: &[u8; 64] = block.try_into().expect("64 bytes");
        let masks = BlockMasks::of(block);
        if masks.escapes != 0 {
            return None;
        }
        let inside = prefix_xor(masks.quotes) ^ carry;
        if masks.brackets & !inside != 0 {
            return None;
        }
        carry = 0u64.wrapping_sub(inside >> 63);
        let mut commas = masks.commas & !inside;
        while commas != 0 {
            let comma = at + commas.trailing_zeros() as usize;
            sum = sum.wrapping_add(member_hash(&inner[start..comma], keys));
            members += 1;
            start = comma + 1;
            commas &= commas - 1;
        }
        at += 64;
    }
    // A string left open.
    if carry != 0 {
        return None;
    }
    sum = sum.wrapping_add(member_hash(&inner[start..], keys));
    Some(fold(sum ^ keys[1], members ^ keys[2]))
}

/// A hash of one member (`"key":value`, mostly 10 to 40 bytes) with [`row_hash`]'s keys:
/// wyhash's way with short inputs, two words read from both ends (overlapping when
/// shorter than 16 bytes), no copy; the length is mixed in.
fn member_hash(bytes: &[u8], keys: &[u64; 5]) -> u64 {
    let len = bytes.len();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| {
        u64::from(u32::from_le_bytes(
            bytes[at..at + 4].try_into().expect("4 bytes"),
        ))
    };
    let mut h = keys[4] ^ (len as u64).wrapping_mul(keys[0]);
    let (a, b) = match len {
        0 => (0, 0),
        1..=3 => (
            u64::from(bytes[0]) << 16 | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]),
            0,
        ),
        4..=7 => (half(0), half(len - 4)),
        8..=16 => (word(0), word(len - 8)),
        _ => {
            let mut at = 0;
            while len - at > 16 {
                h = fold(word(at) ^ keys[1], word(at + 8) ^ h);
                at += 16;
            }
            (word(len - 16), word(len - 8))
        }
    };
    h = fold(a ^ keys[2], b ^ h);
    fold(h, keys[3] ^ keys[4])
}

/// Where the bytes [`members_hash`] looks for are in a block of 64: bit `i` for byte `i`.
#[derive(Debug, Default, PartialEq)]
struct BlockMasks {
    quotes: u64,
    commas: u64,
    escapes: u64,
    /// `{` and `[`.
    brackets: u64,
}

impl BlockMasks {
    /// Sixteen bytes per compare (SSE2, part of every x86_64).
    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; 64]) -> BlockMasks {
        let mut masks = BlockMasks::default();
        for (index, chunk) in block.chunks_exact(16).enumerate() {
            let chunk: &[u8; 16] = chunk.try_into().expect("16 bytes");
            // SAFETY: SSE2 is part of every x86_64 CPU.
            let [quotes, commas, escapes, brackets] = unsafe { sse2_find(chunk) };
            let shift = index * 16;
            masks.quotes |= u64::from(quotes) << shift;
            masks.commas |= u64::from(commas) << shift;
            masks.escapes |= u64::from(escapes) << shift;
            masks.brackets |= u64::from(brackets) << shift;
        }
        masks
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; 64]) -> BlockMasks {
        BlockMasks::bytewise(block)
    }

    /// A byte at a time (other CPUs; and the reference the tests compare with).
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn bytewise(block: &[u8; 64]) -> BlockMasks {
        let mut masks = BlockMasks::default();
        for (i, &byte) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match byte {
                b'"' => masks.quotes |= bit,
                b',' => masks.commas |= bit,
                b'\\' => masks.escapes |= bit,
                b'{' | b'[' => masks.brackets |= bit,
                _ => {}
            }
        }
        masks
    }
}

/// [`BlockMasks`] of 16 bytes: quotes, commas, backslashes, `{` and `[`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sse2_find(chunk: &[u8; 16]) -> [u16; 4] {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: reads the 16 bytes of `chunk` (an unaligned load).
    let bytes = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
    let quotes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
    let commas = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b',' as i8));
    let escapes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
    let brackets = _mm_or_si128(
        _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'{' as i8)),
        _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'[' as i8)),
    );
    [quotes, commas, escapes, brackets].map(|found| _mm_movemask_epi8(found) as u16)
}

fn row_hash_keys() -> &'static [u64; 5] {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<[u64; 5]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new();
        // Odd, so that no key is zero.
        [1u64, 2, 3, 4, 5].map(|n| random.hash_one(n) | 1)
    })
}

/// The seed behind [`for_each_cluster_row`]: `{"data": [row, …]}` → one call per row.
enum RowStream<'f, F> {
    Envelope(&'f mut F),
    Rows(&'f mut F),
}

impl<'de, F: FnMut(RawRow<'_>) -> Result<(), serde_json::Error>> serde::de::DeserializeSeed<'de>
    for RowStream<'_, F>
{
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        match self {
            // As serde's derive does, so both decoders accept exactly the same input.
            RowStream::Envelope(_) => deserializer.deserialize_struct("Envelope", &["data"], self),
            RowStream::Rows(_) => deserializer.deserialize_seq(self),
        }
    }
}

impl<'de, F: FnMut(RawRow<'_>) -> Result<(), serde_json::Error>> serde::de::Visitor<'de>
    for RowStream<'_, F>
{
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RowStream::Envelope(_) => f.write_str("an object with a `data` list"),
            RowStream::Rows(_) => f.write_str("a list of resources"),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let (RowStream::Envelope(each_row) | RowStream::Rows(each_row)) = self;
        let mut rows = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "data" {
                if rows.is_some() {
                    return Err(serde::de::Error::duplicate_field("data"));
                }
                rows = Some(map.next_value_seed(RowStream::Rows(&mut *each_row))?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        rows.ok_or_else(|| serde::de::Error::missing_field("data"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let each_row = match self {
            // The envelope in its sequence form, `[[row, …]]`.
            RowStream::Envelope(each_row) => {
                return seq
                    .next_element_seed(RowStream::Rows(each_row))?
                    .ok_or_else(|| {
                        serde::de::Error::invalid_length(0, &"an object with a `data` list")
                    });
            }
            RowStream::Rows(each_row) => each_row,
        };
        let mut rows = 0;
        // Each row is only delimited here (serde_json's raw value: a scan, no decoding);
        // `each_row` decodes the rows it needs.
        while let Some(row) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            each_row(RawRow { text: row.get() }).map_err(serde::de::Error::custom)?;
            rows += 1;
        }
        Ok(rows)
    }
}

/// Decodes `{"data": T}`, naming the endpoint and the JSON path on failure.
pub(super) fn decode_data<T: DeserializeOwned>(label: &str, body: &[u8]) -> Result<T, PveError> {
    #[derive(Deserialize)]
    struct Envelope<T> {
        data: T,
    }
    let envelope: Envelope<T> = decode(label, body)?;
    Ok(envelope.data)
}

pub(super) fn decode<T: DeserializeOwned>(label: &str, body: &[u8]) -> Result<T, PveError> {
    // The plain decoder first: path tracking costs on every field, and the fast lane
    // decodes megabytes per poll at cluster scale. Only a failure is decoded again,
    // with the path, for an error message that names the field.
    // UTF-8 is checked once for the whole body (fast, vectorised), so the parser does not
    // validate every string again as `from_slice` does.
    if let Ok(Ok(value)) = std::str::from_utf8(body).map(serde_json::from_str) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = if path == "." {
            err.inner().to_string()
        } else {
            format!("{path}: {}", err.inner())
        };
        PveError::Decode {
            endpoint: label.to_owned(),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{member_hash, row_hash, row_hash_keys, split_rows, BlockMasks, RawRow};

    fn rows(text: &str) -> Option<Vec<&str>> {
        let ranges = split_rows(text)?;
        Some(
            ranges
                .into_iter()
                .map(|(start, end)| &text[start as usize..end as usize])
                .collect(),
        )
    }

    #[test]
    fn rows_are_found_around_strings_with_brackets_and_escaped_quotes() {
        let text = " {\n \"data\" : [ {\"name\":\"a\\\"}]{[\",\"tags\":[\"x\"],\"o\":{\"k\":\"\\\\\"}} ,\r\n\t{\"type\":\"node\"} ] } \n";
        assert_eq!(
            rows(text).unwrap(),
            [
                r#"{"name":"a\"}]{[","tags":["x"],"o":{"k":"\\"}}"#,
                r#"{"type":"node"}"#
            ]
        );
        assert_eq!(rows(r#"{"data":[]}"#).unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn any_other_shape_is_left_to_serde() {
        for text in [
            r#"{"data":[1,2]}"#,
            r#"{"data":[{}]"#,
            r#"{"data":[{}]} x"#,
            r#"{"data":[{},]}"#,
            r#"{"data":[{} {}]}"#,
            r#"{"data":[{"a":"unterminated}]}"#,
            r#"{"data":[{}}]}"#,
            r#"{"total":1,"data":[{}]}"#,
            r#"{"data":[{}],"total":1}"#,
            r#"[[{}]]"#,
            "",
        ] {
            assert_eq!(rows(text), None, "{text}");
        }
    }

    #[test]
    fn a_row_hash_changes_with_any_one_byte_and_with_the_length() {
        // Every length across the lanes' 64-byte blocks, the 16-byte pairs and the tail.
        let row: Vec<u8> = (0..300u32).map(|i| b' ' + (i * 7 % 90) as u8).collect();
        let mut seen = std::collections::HashSet::new();
        for len in 0..=row.len() {
            assert!(seen.insert(row_hash(&row[..len])), "length {len}");
        }
        // Any one byte changed, anywhere, in a row of a guest's size and in one of 70.
        for len in [70, row.len()] {
            for at in 0..len {
                for flip in [1u8, 0x80] {
                    let mut changed = row[..len].to_vec();
                    changed[at] ^= flip;
                    assert!(seen.insert(row_hash(&changed)), "byte {at} of {len}");
                }
            }
        }
        // Trailing zero bytes are not the same as a shorter row.
        assert_ne!(row_hash(b"{}"), row_hash(b"{}\0"));
        assert_eq!(
            row_hash(&row),
            row_hash(&row.clone()),
            "a hash, not a counter"
        );
    }

    fn hash(text: &str) -> u64 {
        RawRow::new(text).hash()
    }

    #[test]
    fn a_rows_hash_is_the_same_whatever_the_order_of_its_members() {
        let members = [
            r#""id":"qemu/100""#,
            r#""name":"a,b}c,""#,
            r#""cpu":0.25"#,
            r#""tags":"x;y""#,
            r#""vmid":100"#,
        ];
        let row = |order: &[usize]| {
            let parts: Vec<&str> = order.iter().map(|&i| members[i]).collect();
            format!("{{{}}}", parts.join(","))
        };
        let first = hash(&row(&[0, 1, 2, 3, 4]));
        for order in [[4, 3, 2, 1, 0], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3]] {
            assert_eq!(hash(&row(&order)), first, "{}", row(&order));
        }
        // A member less, one twice, or one value changed is another row.
        assert_ne!(hash(&row(&[0, 1, 2, 3])), first);
        assert_ne!(hash(&row(&[0, 1, 2, 3, 4, 4])), first);
        assert_ne!(hash(&row(&[0, 1, 2, 3, 4]).replace("0.25", "0.26")), first);
        // Members are split at commas outside strings only: moving a comma across a
        // string's quote makes other members, so another hash.
        assert_ne!(
            hash(r#"{"a":"x,","b":1}"#),
            hash(r#"{"b":1,"a":"x,"}"#.replace("x,", "x").as_str())
        );
        assert_eq!(hash(r#"{"a":"x,","b":1}"#), hash(r#"{"b":1,"a":"x,"}"#));
    }

    #[test]
    fn a_row_that_is_no_flat_object_is_hashed_byte_for_byte() {
        // Members of nested values could be swapped between them: no sum for those.
        let nested = r#"{"a":[1,2],"b":[3,4]}"#;
        let swapped = r#"{"a":[1,4],"b":[3,2]}"#;
        assert_eq!(hash(nested), row_hash(nested.as_bytes()));
        assert_ne!(hash(nested), hash(swapped));
        for text in [
            r#"{"a":{"b":1,"c":2}}"#,
            r#"{"a":"unterminated}"#,
            "[1,2]",
            "",
        ] {
            assert_eq!(hash(text), row_hash(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn the_block_masks_mark_the_bytes_a_byte_at_a_time_would() {
        // Every byte value at every place of a block, and blocks of the looked-for bytes.
        let mut block = [b'a'; 64];
        for byte in 0..=255u8 {
            for at in [0, 1, 15, 16, 31, 47, 63] {
                block[at] = byte;
                assert_eq!(BlockMasks::of(&block), BlockMasks::bytewise(&block));
                block[at] = b'a';
            }
        }
        let mixed: Vec<u8> = (0..64).map(|i| b"\",\\{[x:"[i * 7 % 7]).collect();
        let mixed: [u8; 64] = mixed.try_into().unwrap();
        assert_eq!(BlockMasks::of(&mixed), BlockMasks::bytewise(&mixed));
    }

    #[test]
    fn long_rows_hash_alike_in_any_order_across_the_64_byte_blocks() {
        // Members long and short, strings with commas and brackets that span the blocks.
        let members: Vec<String> = (0..12)
            .map(|i| match i % 3 {
                0 => format!(r#""k{i}":"{}""#, ",[{".repeat(i * 3 + 5)),
                1 => format!(r#""key-{i}":{}"#, 1000 * i),
                _ => format!(r#""n{i}":"{}""#, "x".repeat(i * 11)),
            })
            .collect();
        let row = |order: &[usize]| {
            let parts: Vec<&str> = order.iter().map(|&i| members[i].as_str()).collect();
            format!("{{{}}}", parts.join(","))
        };
        let order: Vec<usize> = (0..12).collect();
        let first = hash(&row(&order));
        assert_ne!(
            first,
            row_hash(row(&order).as_bytes()),
            "split into members"
        );
        for rotate in 1..12 {
            let mut other = order.clone();
            other.rotate_left(rotate);
            other.swap(0, 11 - rotate);
            assert_eq!(hash(&row(&other)), first, "{}", row(&other));
        }
        // A nested value after the first block, or an escape anywhere: byte for byte.
        let nested = row(&order).replace(r#""key-4":4000"#, r#""key-4":[4000]"#);
        assert_eq!(hash(&nested), row_hash(nested.as_bytes()));
        let escaped = row(&order).replace("xxxx", r#"x\"xx"#);
        assert_eq!(hash(&escaped), row_hash(escaped.as_bytes()));
    }

    #[test]
    fn a_member_hash_changes_with_any_one_byte_and_with_the_length() {
        // Every length across the short forms (1-3, 4-7, 8-16 bytes) and the 16-byte loop.
        let keys = row_hash_keys();
        let member: Vec<u8> = (0..70u32).map(|i| b' ' + (i * 7 % 90) as u8).collect();
        let mut seen = std::collections::HashSet::new();
        for len in 0..=member.len() {
            assert!(
                seen.insert(member_hash(&member[..len], keys)),
                "length {len}"
            );
        }
        for len in [1, 2, 3, 5, 8, 12, 16, 17, 31, 33, 70] {
            for at in 0..len {
                for flip in [1u8, 0x80] {
                    let mut changed = member[..len].to_vec();
                    changed[at] ^= flip;
                    assert!(
                        seen.insert(member_hash(&changed, keys)),
                        "byte {at} of {len}"
                    );
                }
            }
        }
    }
}
