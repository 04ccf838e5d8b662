//! Strict bencode (BEP 3) encoding and decoding.
//!
//! The decoder accepts only the canonical form: integers without leading
//! zeros or `-0`, dictionary keys strictly ascending, and nothing after the
//! top-level value. Canonical-only input means a decoded value re-encodes to
//! the exact same bytes, and it shuts out ambiguity tricks from untrusted
//! peers. Nesting depth is capped so hostile input cannot exhaust the stack.

use std::collections::BTreeMap;

/// Deepest list/dict nesting [`decode`] accepts.
pub const MAX_DEPTH: usize = 64;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// `BTreeMap` keeps keys in the raw-byte order bencode requires.
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why [`decode`] rejected its input. Offsets are byte positions in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("unexpected end of input at offset {0}")]
    UnexpectedEof(usize),
    #[error("unexpected byte 0x{byte:02x} at offset {offset}")]
    UnexpectedByte { byte: u8, offset: usize },
    #[error("malformed or non-canonical integer at offset {0}")]
    InvalidInteger(usize),
    #[error("integer out of range at offset {0}")]
    IntegerOutOfRange(usize),
    #[error("malformed or non-canonical byte-string length at offset {0}")]
    InvalidLength(usize),
    #[error("byte string at offset {offset} declares more bytes than remain in the input")]
    LengthExceedsInput { offset: usize },
    #[error("dictionary key at offset {0} is not a byte string")]
    KeyNotBytes(usize),
    #[error("dictionary key at offset {0} is not in strictly ascending order")]
    UnsortedKey(usize),
    #[error("dictionary key at offset {0} is a duplicate")]
    DuplicateKey(usize),
    #[error("nesting deeper than {MAX_DEPTH} levels at offset {0}")]
    TooDeep(usize),
    #[error("trailing data after value at offset {0}")]
    TrailingData(usize),
}

impl Value {
    /// A dict from `(key, value)` pairs; later duplicates replace earlier ones.
    pub fn dict<K, I>(entries: I) -> Value
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, Value)>,
    {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v))
                .collect(),
        )
    }

    /// A byte string.
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }

    /// A byte string holding UTF-8 text.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks up `key` when `self` is a dict; `None` otherwise.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&Value> {
        self.as_dict().and_then(|d| d.get(key.as_ref()))
    }
}

/// Encodes `value` into a fresh buffer.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(entries) => {
            out.push(b'd');
            for (k, v) in entries {
                encode_bytes(k, out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Decodes exactly one canonical value spanning all of `input`.
pub fn decode(input: &[u8]) -> Result<Value, BencodeError> {
    let mut d = Decoder { input, pos: 0 };
    let value = d.value(0)?;
    if d.pos != input.len() {
        return Err(BencodeError::TrailingData(d.pos));
    }
    Ok(value)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEof(self.pos))
    }

    /// `depth` counts the containers already open around this value.
    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        match self.peek()? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.bytes().map(Value::Bytes),
            b'l' => {
                let depth = self.enter(depth)?;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let depth = self.enter(depth)?;
                self.dict(depth).map(Value::Dict)
            }
            byte => Err(BencodeError::UnexpectedByte {
                byte,
                offset: self.pos,
            }),
        }
    }

    /// Consumes a container's opening byte, enforcing [`MAX_DEPTH`].
    fn enter(&mut self, depth: usize) -> Result<usize, BencodeError> {
        if depth >= MAX_DEPTH {
            return Err(BencodeError::TooDeep(self.pos));
        }
        self.pos += 1;
        Ok(depth + 1)
    }

    fn dict(&mut self, depth: usize) -> Result<BTreeMap<Vec<u8>, Value>, BencodeError> {
        let mut entries: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
        while self.peek()? != b'e' {
            let key_pos = self.pos;
            if !self.peek()?.is_ascii_digit() {
                return Err(BencodeError::KeyNotBytes(key_pos));
            }
            let key = self.bytes()?;
            // Keys arrive in order, so comparing with the current maximum
            // is enough to catch both disorder and duplicates.
            if let Some((last, _)) = entries.last_key_value() {
                if key == *last {
                    return Err(BencodeError::DuplicateKey(key_pos));
                }
                if key < *last {
                    return Err(BencodeError::UnsortedKey(key_pos));
                }
            }
            let value = self.value(depth)?;
            entries.insert(key, value);
        }
        self.pos += 1;
        Ok(entries)
    }

    /// Parses `i<digits>e` in canonical form.
    fn int(&mut self) -> Result<i64, BencodeError> {
        let start = self.pos;
        self.pos += 1; // 'i'
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits = self.digits();
        let bad = BencodeError::InvalidInteger(start);
        match digits {
            [] => return Err(bad),
            [b'0', _, ..] => return Err(bad),
            [b'0'] if negative => return Err(bad),
            _ => {}
        }
        if self.peek()? != b'e' {
            return Err(bad);
        }
        self.pos += 1;
        // Accumulate towards the sign so i64::MIN is representable.
        let mut n: i64 = 0;
        for &d in digits {
            let d = i64::from(d - b'0');
            n = n
                .checked_mul(10)
                .and_then(|n| {
                    if negative {
                        n.checked_sub(d)
                    } else {
                        n.checked_add(d)
                    }
                })
                .ok_or(BencodeError::IntegerOutOfRange(start))?;
        }
        Ok(n)
    }

    /// Parses `<len>:<bytes>`; the length may not exceed what remains.
    fn bytes(&mut self) -> Result<Vec<u8>, BencodeError> {
        let start = self.pos;
        let digits = self.digits();
        if matches!(digits, [b'0', _, ..]) {
            return Err(BencodeError::InvalidLength(start));
        }
        let mut len: usize = 0;
        for &d in digits {
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or(BencodeError::LengthExceedsInput { offset: start })?;
        }
        if self.peek()? != b':' {
            return Err(BencodeError::InvalidLength(start));
        }
        self.pos += 1;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.input.len())
            .ok_or(BencodeError::LengthExceedsInput { offset: start })?;
        let out = self.input.get(self.pos..end).unwrap_or_default().to_vec();
        self.pos = end;
        Ok(out)
    }

    /// Consumes and returns the run of ASCII digits at the cursor.
    fn digits(&mut self) -> &'a [u8] {
        let input: &'a [u8] = self.input;
        let rest = input.get(self.pos..).unwrap_or_default();
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        self.pos += n;
        rest.get(..n).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> BencodeError {
        match decode(input) {
            Ok(v) => panic!(
                "expected error for {:?}, got {v:?}",
                String::from_utf8_lossy(input)
            ),
            Err(e) => e,
        }
    }

    #[test]
    fn encodes_exact_bytes() {
        assert_eq!(encode(&Value::Int(0)), b"i0e");
        assert_eq!(encode(&Value::Int(-42)), b"i-42e");
        assert_eq!(encode(&Value::Int(i64::MIN)), b"i-9223372036854775808e");
        assert_eq!(encode(&Value::str("")), b"0:");
        assert_eq!(encode(&Value::str("spam")), b"4:spam");
        assert_eq!(
            encode(&Value::List(vec![Value::str("a"), Value::Int(1)])),
            b"l1:ai1ee"
        );
        // Keys come out sorted by raw bytes regardless of insertion order.
        let d = Value::dict([
            ("zz", Value::Int(1)),
            ("a", Value::List(vec![])),
            ("B", Value::dict::<&str, _>([])),
        ]);
        assert_eq!(encode(&d), b"d1:Bde1:ale2:zzi1ee");
    }

    #[test]
    fn encode_into_appends() {
        let mut out = b"xx".to_vec();
        encode_into(&Value::Int(7), &mut out);
        assert_eq!(out, b"xxi7e");
    }

    #[test]
    fn decodes_exact_values() {
        assert_eq!(decode(b"i-7e"), Ok(Value::Int(-7)));
        assert_eq!(decode(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
        assert_eq!(decode(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        assert_eq!(
            decode(b"3:\x00\xff:"),
            Ok(Value::bytes(vec![0, 0xff, b':']))
        );
        let v = decode(b"d3:cowl1:ai2ee4:spamd0:0:ee").unwrap();
        assert_eq!(
            v.get("cow").and_then(Value::as_list).map(<[Value]>::len),
            Some(2)
        );
        assert_eq!(
            v.get("spam")
                .and_then(|s| s.get(""))
                .and_then(Value::as_bytes),
            Some(&b""[..])
        );
        assert_eq!(v.get("missing"), None);
    }

    #[test]
    fn round_trips() {
        let v = Value::dict([
            (
                "info",
                Value::dict([("length", Value::Int(1 << 40)), ("name", Value::str("x"))]),
            ),
            (
                "list",
                Value::List(vec![
                    Value::Int(-1),
                    Value::bytes(vec![0u8; 300]),
                    Value::List(vec![]),
                ]),
            ),
            ("\u{00e9}", Value::Int(0)),
        ]);
        let bytes = encode(&v);
        assert_eq!(decode(&bytes), Ok(v.clone()));
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn getters_reject_wrong_types() {
        let i = Value::Int(3);
        assert_eq!(i.as_int(), Some(3));
        assert_eq!(i.as_bytes(), None);
        assert_eq!(i.as_list(), None);
        assert_eq!(i.as_dict(), None);
        assert_eq!(i.get("a"), None);
        assert_eq!(Value::str("a").as_int(), None);
        assert!(Value::dict([("k", Value::Int(1))]).as_dict().is_some());
    }

    #[test]
    fn rejects_non_canonical_integers() {
        assert_eq!(err(b"i-0e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i03e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i-03e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"ie"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i-e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i+1e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i1.5e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i 1e"), BencodeError::InvalidInteger(0));
        assert_eq!(err(b"i12"), BencodeError::UnexpectedEof(3));
        assert_eq!(err(b"i"), BencodeError::UnexpectedEof(1));
    }

    #[test]
    fn rejects_out_of_range_integers() {
        assert_eq!(
            err(b"i9223372036854775808e"),
            BencodeError::IntegerOutOfRange(0)
        );
        assert_eq!(
            err(b"i-9223372036854775809e"),
            BencodeError::IntegerOutOfRange(0)
        );
        assert_eq!(
            err(b"i99999999999999999999999999e"),
            BencodeError::IntegerOutOfRange(0)
        );
    }

    #[test]
    fn rejects_bad_byte_strings() {
        assert_eq!(err(b"05:hello"), BencodeError::InvalidLength(0));
        assert_eq!(err(b"00:"), BencodeError::InvalidLength(0));
        assert_eq!(err(b"5hello"), BencodeError::InvalidLength(0));
        assert_eq!(
            err(b"5:hell"),
            BencodeError::LengthExceedsInput { offset: 0 }
        );
        assert_eq!(err(b"3"), BencodeError::UnexpectedEof(1));
        assert_eq!(
            err(b"-1:a"),
            BencodeError::UnexpectedByte {
                byte: b'-',
                offset: 0
            }
        );
    }

    #[test]
    fn rejects_huge_declared_lengths_without_allocating() {
        assert_eq!(
            err(b"4294967296:x"),
            BencodeError::LengthExceedsInput { offset: 0 }
        );
        // usize::MAX and beyond: overflow must be an error, not a wrap.
        assert_eq!(
            err(b"18446744073709551615:x"),
            BencodeError::LengthExceedsInput { offset: 0 }
        );
        assert_eq!(
            err(b"99999999999999999999999999999:x"),
            BencodeError::LengthExceedsInput { offset: 0 }
        );
        assert_eq!(
            err(b"l999999999:xe"),
            BencodeError::LengthExceedsInput { offset: 1 }
        );
    }

    #[test]
    fn rejects_bad_dicts() {
        assert_eq!(err(b"d1:bi1e1:ai2ee"), BencodeError::UnsortedKey(7));
        assert_eq!(err(b"d1:ai1e1:ai2ee"), BencodeError::DuplicateKey(7));
        assert_eq!(err(b"di1ei2ee"), BencodeError::KeyNotBytes(1));
        assert_eq!(err(b"dle1:ae"), BencodeError::KeyNotBytes(1));
        assert_eq!(
            err(b"d1:ae"),
            BencodeError::UnexpectedByte {
                byte: b'e',
                offset: 4
            }
        );
        assert_eq!(err(b"d1:a"), BencodeError::UnexpectedEof(4));
        assert_eq!(err(b"d"), BencodeError::UnexpectedEof(1));
        // Raw byte order: "B" (0x42) sorts before "a" (0x61); the reverse fails.
        assert!(decode(b"d1:Bi1e1:ai2ee").is_ok());
        assert_eq!(err(b"d1:ai1e1:Bi2ee"), BencodeError::UnsortedKey(7));
        // A prefix sorts before its extensions.
        assert!(decode(b"d1:ai1e2:aai2ee").is_ok());
        assert_eq!(err(b"d2:aai1e1:ai2ee"), BencodeError::UnsortedKey(8));
    }

    #[test]
    fn rejects_structural_errors() {
        assert_eq!(err(b""), BencodeError::UnexpectedEof(0));
        assert_eq!(err(b"l"), BencodeError::UnexpectedEof(1));
        assert_eq!(err(b"li1e"), BencodeError::UnexpectedEof(4));
        assert_eq!(
            err(b"e"),
            BencodeError::UnexpectedByte {
                byte: b'e',
                offset: 0
            }
        );
        assert_eq!(
            err(b"x"),
            BencodeError::UnexpectedByte {
                byte: b'x',
                offset: 0
            }
        );
        assert_eq!(err(b"i1ei2e"), BencodeError::TrailingData(3));
        assert_eq!(err(b"lee"), BencodeError::TrailingData(2));
        assert_eq!(err(b"0:\n"), BencodeError::TrailingData(2));
    }

    #[test]
    fn nesting_limit() {
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        let too_deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(decode(&too_deep), Err(BencodeError::TooDeep(MAX_DEPTH)));
        // Far beyond the limit must fail fast, not blow the stack.
        let hostile = vec![b'l'; 1_000_000];
        assert_eq!(decode(&hostile), Err(BencodeError::TooDeep(MAX_DEPTH)));
        let dicts = b"d1:a".repeat(MAX_DEPTH + 1);
        assert_eq!(decode(&dicts), Err(BencodeError::TooDeep(4 * MAX_DEPTH)));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            BencodeError::UnexpectedByte {
                byte: b'x',
                offset: 3
            }
            .to_string(),
            "unexpected byte 0x78 at offset 3"
        );
        assert_eq!(
            BencodeError::TooDeep(9).to_string(),
            "nesting deeper than 64 levels at offset 9"
        );
    }
}
