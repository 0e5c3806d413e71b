//! A guest row of `/cluster/resources`, read without copying a string (issue 10).
//!
//! In a moving world pvestatd changes every running guest's row every ~10 s, so at 5,000
//! guests the fast lane reads ~4,500 changed rows on every other poll. Decoded into a
//! [`Resource`] by serde, each row cost ~25 field-name lookups, up to 8 string copies and
//! a lenient visitor per number: about half of a moving poll (`cargo bench --bench
//! poll_cost`). [`RawRow::scan_guest`] reads a guest row in one pass into a [`GuestRow`]
//! whose texts are borrowed from the answer.
//!
//! The scan gives exactly what serde would, or nothing: it takes only the plain shape
//! Proxmox sends (an object of strings without escapes, plain numbers, `0`/`1` flags and
//! `null`), and hands every other value to the very readers serde uses (`de`) or gives
//! up, so that the row is decoded by serde as before (`None`: an escape, a nested value,
//! a duplicate field, a number that is not JSON, a row that is not a guest's). Unknown
//! fields are skipped as serde skips them, after the same checks of their JSON.
use super::client::RawRow;
use super::de;
use super::{GuestKind, Resource};

/// What the bridge reads of a guest's row: every field [`Resource`] has for a guest, with
/// its texts borrowed. Made by [`RawRow::scan_guest`] or, from a decoded row, by
/// [`GuestRow::of`]; both give the same for the same row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuestRow<'a> {
    pub kind: GuestKind,
    pub vmid: u32,
    pub node: &'a str,
    pub name: Option<&'a str>,
    pub status: Option<&'a str>,
    pub cpu: Option<f64>,
    pub maxcpu: Option<f64>,
    pub mem: Option<u64>,
    pub maxmem: Option<u64>,
    pub disk: Option<u64>,
    pub maxdisk: Option<u64>,
    pub netin: Option<u64>,
    pub netout: Option<u64>,
    pub diskread: Option<u64>,
    pub diskwrite: Option<u64>,
    pub uptime: Option<u64>,
    pub template: bool,
    /// Proxmox's tag string (`a;b`).
    pub tags: Option<&'a str>,
    pub lock: Option<&'a str>,
    pub hastate: Option<&'a str>,
    pub pool: Option<&'a str>,
}

impl<'a> GuestRow<'a> {
    /// The guest row of a decoded row; `None` for another kind of row, or a guest row
    /// without a vmid or a node (the bridge has no guest to make of it).
    pub fn of(row: &'a Resource) -> Option<GuestRow<'a>> {
        let Resource {
            kind,
            node,
            vmid,
            name,
            status,
            cpu,
            maxcpu,
            mem,
            maxmem,
            disk,
            maxdisk,
            netin,
            netout,
            diskread,
            diskwrite,
            uptime,
            template,
            tags_raw,
            lock,
            hastate,
            pool,
            // Storage and node fields: not a guest's.
            storage: _,
            plugintype: _,
            content: _,
            shared: _,
            level: _,
        } = row;
        Some(GuestRow {
            kind: GuestKind::of(kind)?,
            vmid: (*vmid)?,
            node: node.as_deref()?,
            name: name.as_deref(),
            status: status.as_deref(),
            cpu: *cpu,
            maxcpu: *maxcpu,
            mem: *mem,
            maxmem: *maxmem,
            disk: *disk,
            maxdisk: *maxdisk,
            netin: *netin,
            netout: *netout,
            diskread: *diskread,
            diskwrite: *diskwrite,
            uptime: *uptime,
            template: *template,
            tags: tags_raw.as_deref(),
            lock: lock.as_deref(),
            hastate: hastate.as_deref(),
            pool: pool.as_deref(),
        })
    }
}

impl<'a> RawRow<'a> {
    /// The row as a [`GuestRow`], read in one pass; `None` when it is no guest's row or
    /// is not of the plain shape this reads (see the module doc): decode it then.
    pub fn scan_guest(&self) -> Option<GuestRow<'a>> {
        let mut scan = Scan {
            text: self.text(),
            at: 0,
        };
        let mut fields = Fields::default();
        scan.skip_space();
        scan.expect(b'{')?;
        scan.skip_space();
        if scan.peek()? == b'}' {
            return None;
        }
        loop {
            let key = scan.string()?;
            scan.skip_space();
            scan.expect(b':')?;
            scan.skip_space();
            fields.read(key, &mut scan)?;
            scan.skip_space();
            match scan.next()? {
                b',' => scan.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
        scan.skip_space();
        if scan.at != scan.text.len() {
            return None;
        }
        fields.into_row()
    }
}

/// The fields of a guest row as the scan found them (see [`GuestRow`]).
#[derive(Default)]
struct Fields<'a> {
    /// Known fields seen so far, one bit each: serde refuses a duplicate.
    seen: u32,
    kind: Option<GuestKind>,
    vmid: Option<u32>,
    node: Option<&'a str>,
    name: Option<&'a str>,
    status: Option<&'a str>,
    cpu: Option<f64>,
    maxcpu: Option<f64>,
    mem: Option<u64>,
    maxmem: Option<u64>,
    disk: Option<u64>,
    maxdisk: Option<u64>,
    netin: Option<u64>,
    netout: Option<u64>,
    diskread: Option<u64>,
    diskwrite: Option<u64>,
    uptime: Option<u64>,
    template: bool,
    tags: Option<&'a str>,
    lock: Option<&'a str>,
    hastate: Option<&'a str>,
    pool: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// Reads the value of field `key`; `None`: give up.
    fn read(&mut self, key: &str, scan: &mut Scan<'a>) -> Option<()> {
        let bit = match key {
            "type" => 0,
            "node" => 1,
            "vmid" => 2,
            "name" => 3,
            "status" => 4,
            "cpu" => 5,
            "maxcpu" => 6,
            "mem" => 7,
            "maxmem" => 8,
            "disk" => 9,
            "maxdisk" => 10,
            "netin" => 11,
            "netout" => 12,
            "diskread" => 13,
            "diskwrite" => 14,
            "uptime" => 15,
            "template" => 16,
            "tags" => 17,
            "lock" => 18,
            "hastate" => 19,
            "pool" => 20,
            // A storage's or a node's fields: serde reads them on a guest row too.
            "storage" => 21,
            "plugintype" => 22,
            "content" => 23,
            "level" => 24,
            "shared" => 25,
            _ => return scan.skip_value(),
        };
        if self.seen & (1 << bit) != 0 {
            return None;
        }
        self.seen |= 1 << bit;
        match bit {
            // A node's or a storage's row (a few dozen an answer): serde decodes it.
            0 => self.kind = Some(scan.string()?.parse().ok()?),
            1 => self.node = scan.text_value()?,
            // `de::opt_vmid`: a count that fits a u32 (serde fails on any other).
            2 => self.vmid = scan.count()?.map(u32::try_from).transpose().ok()?,
            3 => self.name = scan.text_value()?,
            4 => self.status = scan.text_value()?,
            5 => self.cpu = scan.lenient(|json| de::opt_f64(json))?,
            6 => self.maxcpu = scan.lenient(|json| de::opt_f64(json))?,
            7 => self.mem = scan.count()?,
            8 => self.maxmem = scan.count()?,
            9 => self.disk = scan.count()?,
            10 => self.maxdisk = scan.count()?,
            11 => self.netin = scan.count()?,
            12 => self.netout = scan.count()?,
            13 => self.diskread = scan.count()?,
            14 => self.diskwrite = scan.count()?,
            15 => self.uptime = scan.count()?,
            16 => self.template = scan.lenient(|json| de::bool_or_false(json))?,
            17 => self.tags = scan.text_value()?,
            18 => self.lock = scan.text_value()?,
            19 => self.hastate = scan.text_value()?,
            20 => self.pool = scan.text_value()?,
            25 => drop(scan.lenient(|json| de::bool_or_false(json))?),
            _ => drop(scan.text_value()?),
        }
        Some(())
    }

    fn into_row(self) -> Option<GuestRow<'a>> {
        Some(GuestRow {
            kind: self.kind?,
            vmid: self.vmid?,
            node: self.node?,
            name: self.name,
            status: self.status,
            cpu: self.cpu,
            maxcpu: self.maxcpu,
            mem: self.mem,
            maxmem: self.maxmem,
            disk: self.disk,
            maxdisk: self.maxdisk,
            netin: self.netin,
            netout: self.netout,
            diskread: self.diskread,
            diskwrite: self.diskwrite,
            uptime: self.uptime,
            template: self.template,
            tags: self.tags,
            lock: self.lock,
            hastate: self.hastate,
            pool: self.pool,
        })
    }
}

type Json<'a> = serde_json::Deserializer<serde_json::de::StrRead<'a>>;

/// A cursor over one row's JSON text.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's whitespace.
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters, borrowed; `None` for any other
    /// value or string.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    /// A text field (`de::opt_string`): a string, or `null` (`Some(None)`); a number or
    /// a boolean (which serde would turn into their text) gives up.
    fn text_value(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'"' => self.string().map(Some),
            b'n' => self.literal("null").map(|()| None),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A count (`de::opt_u64`): a plain integer is read here, anything else by the
    /// reader serde uses.
    fn count(&mut self) -> Option<Option<u64>> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut end = start;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let digits = end - start;
        let plain = (1..=19).contains(&digits)
            && (digits == 1 || bytes[start] != b'0')
            && !matches!(bytes.get(end), Some(b'.' | b'e' | b'E'));
        if !plain {
            return self.lenient(|json| de::opt_u64(json));
        }
        self.at = end;
        self.text[start..end].parse().ok().map(Some)
    }

    /// The next value read by `reader`, one of the `de` readers serde uses for the
    /// field, over exactly that value's JSON (a string, a number or a literal).
    fn lenient<T>(
        &mut self,
        reader: impl FnOnce(&mut Json<'_>) -> Result<T, serde_json::Error>,
    ) -> Option<T> {
        let start = self.at;
        self.skip_value()?;
        let mut json = serde_json::Deserializer::from_str(self.text.get(start..self.at)?);
        let value = reader(&mut json).ok()?;
        json.end().ok()?;
        Some(value)
    }

    /// Passes over a value serde would accept and ignore: a string without escapes, a
    /// number of JSON's grammar, `true`, `false` or `null`. Anything else gives up.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        let digits = |at: &mut usize| {
            let start = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > start
        };
        let mut at = self.at;
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        if bytes.get(at) == Some(&b'0') {
            at += 1;
        } else if !digits(&mut at) {
            return None;
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        self.at = at;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::GuestRow;
    use crate::pve::{for_each_cluster_row, RawRow, Resource};

    const RECORDED: [&str; 2] = [
        include_str!(
            "../../../../tests/fixtures/pve/cluster_resources.1node-lxc-qemu-storage-sdn.json"
        ),
        include_str!(
            "../../../../tests/fixtures/pve/cluster_resources.4node-qemu-node-storage.json"
        ),
    ];

    /// The scan of `text`, checked against serde: when the scan reads a row, serde
    /// decodes it to the same guest row.
    fn scanned(text: &str) -> Option<GuestRow<'_>> {
        let scanned = RawRow::new(text).scan_guest();
        if let Some(guest) = scanned {
            let decoded: Resource = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("scanned, but serde fails ({e}): {text}"));
            assert_eq!(GuestRow::of(&decoded), Some(guest), "{text}");
        }
        scanned
    }

    #[test]
    fn every_guest_row_of_the_recorded_answers_is_scanned_as_serde_decodes_it() {
        let mut guests = 0;
        for answer in RECORDED {
            for_each_cluster_row(answer.as_bytes(), |raw| {
                let decoded = raw.decode()?;
                match GuestRow::of(&decoded) {
                    Some(guest) => {
                        guests += 1;
                        assert_eq!(scanned(raw.text()), Some(guest), "{}", raw.text());
                    }
                    None => assert_eq!(scanned(raw.text()), None, "{}", raw.text()),
                }
                Ok(())
            })
            .unwrap();
        }
        assert!(guests >= 5, "only {guests} guest rows");
    }

    #[test]
    fn the_forms_a_perl_scalar_takes_are_read_as_serde_reads_them() {
        let rows = [
            // vmid as a string (older lxc lists), cpu 0 as an integer, flags as strings.
            r#"{"type":"lxc","vmid":"103","node":"pve","cpu":0,"template":"1","mem":"512"}"#,
            r#"{"type":"qemu","vmid":100,"node":"pve","cpu":"0.25","maxcpu":2.0,"mem":1.5e3}"#,
            r#"{"type":"qemu","vmid":100,"node":"pve","name":null,"tags":"","uptime":0}"#,
            " { \"type\" : \"qemu\" ,\n \"vmid\" : 7 , \"node\":\"n\", \"disk\": 0.0 } ",
            // Unknown fields of every scalar kind are skipped as serde skips them.
            r#"{"id":"qemu/1","type":"qemu","vmid":1,"node":"n","memhost":-1.5e-3,"x":true,"y":null,"z":false}"#,
            // A storage's fields on a guest row are read and dropped as by serde.
            r#"{"type":"qemu","vmid":1,"node":"n","storage":"local","shared":1,"level":""}"#,
        ];
        for row in rows {
            assert!(scanned(row).is_some(), "{row}");
        }
        let guest = scanned(rows[0]).unwrap();
        assert_eq!(
            (guest.vmid, guest.template, guest.mem),
            (103, true, Some(512))
        );
    }

    #[test]
    fn rows_of_another_shape_are_left_to_serde() {
        let rows = [
            // Not a guest's row, or no guest to make of it.
            r#"{"type":"node","node":"pve","status":"online"}"#,
            r#"{"type":"qemu","node":"pve"}"#,
            r#"{"type":"qemu","vmid":1}"#,
            r#"{}"#,
            // An escape or a control character in a string, or in a key.
            r#"{"type":"qemu","vmid":1,"node":"n","name":"a\"b"}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","name":"\u00e9"}"#,
            "{\"type\":\"qemu\",\"vmid\":1,\"node\":\"n\",\"name\":\"a\tb\"}",
            r#"{"type":"qemu","vmid":1,"node":"n","c\u0070u":0.5}"#,
            // Nested values, a number or a boolean for a text, a duplicate field.
            r#"{"type":"qemu","vmid":1,"node":"n","extra":{"a":1}}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","extra":[1]}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","name":12}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","cpu":0.1,"cpu":0.2}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","shared":0,"shared":0}"#,
            // What serde refuses: a negative count, a vmid beyond u32, bad numbers, junk.
            r#"{"type":"qemu","vmid":1,"node":"n","mem":-1}"#,
            r#"{"type":"qemu","vmid":4294967296,"node":"n"}"#,
            r#"{"type":"qemu","vmid":01,"node":"n"}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","x":1.}"#,
            r#"{"type":"qemu","vmid":1,"node":"n","x":-}"#,
            r#"{"type":"qemu","vmid":1,"node":"n",}"#,
            r#"{"type":"qemu","vmid":1,"node":"n"} x"#,
            r#"{"type":"qemu","vmid":1,"node":"n""#,
        ];
        for row in rows {
            assert_eq!(scanned(row), None, "{row}");
        }
    }
}
