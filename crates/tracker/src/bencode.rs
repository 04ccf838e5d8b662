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
                .and_then(|n| if negative { n.checked_sub(d) } else { n.checked_add(d) })
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
