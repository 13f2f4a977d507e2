//! JSON for the `:json` transformer, with the mapping Elixir users know from
//! Jason: maps ↔ objects (decoded keys are binaries), lists ↔ arrays,
//! binaries ↔ strings, `nil` ↔ `null`, booleans, numbers; other atoms encode
//! as strings. Anything else (tuples, pids, structs, non-UTF-8 binaries,
//! improper lists) is an error, never a crash.
//!
//! As in Jason, any nesting depth works and integers of any size stay exact
//! both ways (`-0` is the integer 0, `-0.0` a float). Both directions walk
//! with an explicit stack on the heap, never recursing per level: a NIF runs
//! on a scheduler thread, whose stack is small (a dirty one's too), and
//! 100,000 nested arrays would overflow it.
//!
//! The NIFs `json_encode/1` and `json_decode/1` run on a normal scheduler
//! within a work budget and answer `:too_big` past it; `Yggdrasil.Transformer.Json`
//! then calls the `_dirty` variants, which have no budget.

use rustler::types::binary::NewBinary;
use rustler::types::map::MapIterator;
use rustler::{BigInt, Binary, Encoder, Env, Term, TermType};

mod atoms {
    rustler::atoms! { ok, error, too_big, nil }
}

/// Work units a call on a normal scheduler may spend: one per term or
/// JSON value, plus one per 64 bytes of text and per 8 bytes of a big
/// integer (measured: 20,000 small nodes encode in well under 1 ms).
const NORMAL_BUDGET: usize = 20_000;

/// Integers longer than this (decimal digits when decoding, bytes of their
/// external format when encoding) are converted on a dirty scheduler only:
/// the conversion between bases is quadratic in their length.
const NORMAL_MAX_DIGITS: usize = 1_000;
const NORMAL_MAX_BIG_BYTES: usize = 512;

/// `{:ok, json}`, `{:error, reason}`, or `:too_big` when the term should be
/// encoded on a dirty scheduler instead.
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode_reply(env, term, Some(NORMAL_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode_reply(env, term, None)
}

/// `{:ok, term}`, `{:error, reason}`, or `:too_big` when the text should be
/// decoded on a dirty scheduler instead.
#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    decode_reply(env, text.as_slice(), true)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode_dirty<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    decode_reply(env, text.as_slice(), false)
}

fn encode_reply<'a>(env: Env<'a>, term: Term<'a>, budget: Option<usize>) -> Term<'a> {
    match encode(term, budget) {
        Ok(bytes) => {
            let mut binary = NewBinary::new(env, bytes.len());
            binary.as_mut_slice().copy_from_slice(&bytes);
            (atoms::ok(), Binary::from(binary)).encode(env)
        }
        Err(Failure::OverBudget) => atoms::too_big().encode(env),
        Err(Failure::Invalid(reason)) => (atoms::error(), reason).encode(env),
    }
}

fn decode_reply<'a>(env: Env<'a>, bytes: &[u8], limited: bool) -> Term<'a> {
    match decode(env, bytes, limited) {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(Failure::OverBudget) => atoms::too_big().encode(env),
        Err(Failure::Invalid(reason)) => (atoms::error(), reason).encode(env),
    }
}

/// JSON text as a term, with no limit on the work (for threads of our own).
pub(crate) fn decode_value<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, String> {
    match decode(env, bytes, false) {
        Ok(term) => Ok(term),
        Err(Failure::Invalid(reason)) => Err(reason),
        Err(Failure::OverBudget) => Err("over budget".to_owned()),
    }
}

enum Failure {
    /// More work than a normal scheduler call may do.
    OverBudget,
    Invalid(String),
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Invalid(reason.into()))
}

struct Budget {
    left: usize,
    /// On a normal scheduler: some work is never done there at all.
    limited: bool,
}

impl Budget {
    fn new(limit: Option<usize>) -> Self {
        Budget {
            left: limit.unwrap_or(usize::MAX),
            limited: limit.is_some(),
        }
    }

    fn spend(&mut self, units: usize) -> Result<(), Failure> {
        match self.left.checked_sub(units) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Failure::OverBudget),
        }
    }
}

// ---------------------------------------------------------------- encode

/// A container being written: what is left of it.
enum Open<'a> {
    List {
        rest: Term<'a>,
        first: bool,
    },
    // Boxed: the VM's iterator is several times larger than a list cell.
    Map {
        entries: Box<MapIterator<'a>>,
        first: bool,
    },
}

/// Encodes `term`, spending at most `budget` work units (`None`: no limit).
fn encode(term: Term<'_>, budget: Option<usize>) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    let mut budget = Budget::new(budget);
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut next = Some(term);
    loop {
        if let Some(value) = next.take() {
            if let Some(open) = write_value(&mut out, value, &mut budget)? {
                stack.push(open);
            }
        }
        let Some(top) = stack.last_mut() else {
            return Ok(out);
        };
        match top {
            Open::List { rest, first } => {
                if rest.is_empty_list() {
                    out.push(b']');
                    stack.pop();
                    continue;
                }
                // Cell by cell, not rustler's `ListIterator`, which panics
                // on an improper tail.
                let Ok((item, tail)) = rest.list_get_cell() else {
                    return invalid("improper list");
                };
                if !std::mem::replace(first, false) {
                    out.push(b',');
                }
                *rest = tail;
                next = Some(item);
            }
            Open::Map { entries, first } => match entries.next() {
                None => {
                    out.push(b'}');
                    stack.pop();
                }
                Some((key, value)) => {
                    if !std::mem::replace(first, false) {
                        out.push(b',');
                    }
                    write_key(&mut out, key, &mut budget)?;
                    out.push(b':');
                    next = Some(value);
                }
            },
        }
    }
}

/// Writes a scalar, or the opening of a container (returned, to be filled).
fn write_value<'a>(
    out: &mut Vec<u8>,
    term: Term<'a>,
    budget: &mut Budget,
) -> Result<Option<Open<'a>>, Failure> {
    budget.spend(1)?;
    match term.get_type() {
        TermType::Atom => match term.atom_to_string() {
            Ok(name) if name == "nil" => out.extend_from_slice(b"null"),
            Ok(name) if name == "true" || name == "false" => out.extend_from_slice(name.as_bytes()),
            Ok(name) => write_str(out, &name, budget)?,
            Err(_) => return invalid("unreadable atom"),
        },
        TermType::Binary => write_binary(out, term, budget, "binary is not valid UTF-8")?,
        TermType::Integer => write_integer(out, term, budget)?,
        TermType::Float => match term.decode::<f64>() {
            Ok(x) => write_leaf(out, &x)?,
            Err(_) => return invalid("unreadable float"),
        },
        TermType::List => {
            out.push(b'[');
            return Ok(Some(Open::List {
                rest: term,
                first: true,
            }));
        }
        TermType::Map => {
            if term.map_get(rustler::types::atom::__struct__()).is_ok() {
                return invalid("structs cannot be encoded as JSON");
            }
            let Some(entries) = MapIterator::new(term) else {
                return invalid("unreadable map");
            };
            out.push(b'{');
            return Ok(Some(Open::Map {
                entries: Box::new(entries),
                first: true,
            }));
        }
        other => return invalid(format!("{} cannot be encoded as JSON", type_name(other))),
    }
    Ok(None)
}

/// Object keys: binaries, atoms and integers become strings, as in Jason.
fn write_key(out: &mut Vec<u8>, key: Term<'_>, budget: &mut Budget) -> Result<(), Failure> {
    match key.get_type() {
        TermType::Binary => write_binary(out, key, budget, "map key is not valid UTF-8"),
        TermType::Atom => match key.atom_to_string() {
            Ok(name) => write_str(out, &name, budget),
            Err(_) => invalid("unreadable atom key"),
        },
        TermType::Integer => {
            out.push(b'"');
            write_integer(out, key, budget)?;
            out.push(b'"');
            Ok(())
        }
        _ => invalid("map keys must be binaries, atoms or integers"),
    }
}

fn write_str(out: &mut Vec<u8>, text: &str, budget: &mut Budget) -> Result<(), Failure> {
    budget.spend(text.len() / 64)?;
    write_leaf(out, text)
}

/// A binary as a string. Its size is charged before its UTF-8 is checked: a binary far over the
/// budget is not read at all on a normal scheduler.
fn write_binary(
    out: &mut Vec<u8>,
    term: Term<'_>,
    budget: &mut Budget,
    not_utf8: &str,
) -> Result<(), Failure> {
    let Ok(binary) = term.decode::<Binary>() else {
        return invalid(not_utf8);
    };
    budget.spend(binary.len() / 64)?;
    match std::str::from_utf8(binary.as_slice()) {
        Ok(text) => write_leaf(out, text),
        Err(_) => invalid(not_utf8),
    }
}

fn write_integer(out: &mut Vec<u8>, term: Term<'_>, budget: &mut Budget) -> Result<(), Failure> {
    if let Ok(n) = term.decode::<i64>() {
        return write_leaf(out, &n);
    }
    if let Ok(n) = term.decode::<u64>() {
        return write_leaf(out, &n);
    }
    // A bignum: its external format tells its size before any conversion.
    let bytes = term.to_binary().len();
    if budget.limited && bytes > NORMAL_MAX_BIG_BYTES {
        return Err(Failure::OverBudget);
    }
    budget.spend(bytes / 8)?;
    match term.decode::<BigInt>() {
        Ok(n) => {
            out.extend_from_slice(n.to_string().as_bytes());
            Ok(())
        }
        Err(_) => invalid("unreadable integer"),
    }
}

/// Strings (with JSON escaping), machine integers and floats, written by
/// serde_json: shortest round-tripping floats, standard escapes.
fn write_leaf<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Failure> {
    serde_json::to_writer(out, value).or_else(|error| invalid(error.to_string()))
}

fn type_name(kind: TermType) -> &'static str {
    match kind {
        TermType::Tuple => "a tuple",
        TermType::Pid => "a pid",
        TermType::Port => "a port",
        TermType::Ref => "a reference",
        TermType::Fun => "a function",
        _ => "this term",
    }
}

// ---------------------------------------------------------------- decode

/// A container being read: its elements so far.
enum Building<'a> {
    Array(Vec<Term<'a>>),
    Object {
        keys: Vec<Term<'a>>,
        values: Vec<Term<'a>>,
    },
}

struct Parser<'b> {
    bytes: &'b [u8],
    pos: usize,
    /// Whether this call runs on a normal scheduler (bounded work).
    limited: bool,
}

/// Decodes JSON text into terms (RFC 8259: one value, surrounded by
/// optional whitespace).
fn decode<'a>(env: Env<'a>, bytes: &[u8], limited: bool) -> Result<Term<'a>, Failure> {
    let mut parser = Parser {
        bytes,
        pos: 0,
        limited,
    };
    let mut budget = Budget::new(limited.then_some(NORMAL_BUDGET));
    let mut stack: Vec<Building<'a>> = Vec::new();
    'values: loop {
        budget.spend(1)?;
        parser.skip_whitespace();
        // A scalar, an empty container, or the opening of a container
        // (pushed, then its first element is read).
        let mut value = match parser.peek() {
            Some(b'[') => {
                parser.pos += 1;
                parser.skip_whitespace();
                if parser.eat(b']') {
                    Vec::<Term<'a>>::new().encode(env)
                } else {
                    stack.push(Building::Array(Vec::new()));
                    continue 'values;
                }
            }
            Some(b'{') => {
                parser.pos += 1;
                parser.skip_whitespace();
                if parser.eat(b'}') {
                    rustler::types::map::map_new(env)
                } else {
                    let key = parser.key(env)?;
                    stack.push(Building::Object {
                        keys: vec![key],
                        values: Vec::new(),
                    });
                    continue 'values;
                }
            }
            _ => parser.scalar(env)?,
        };
        // Hand the value to its container; close the containers it ends.
        loop {
            parser.skip_whitespace();
            match stack.last_mut() {
                None => {
                    if parser.pos < bytes.len() {
                        return parser.error("trailing characters");
                    }
                    return Ok(value);
                }
                Some(Building::Array(items)) => {
                    items.push(value);
                    if parser.eat(b',') {
                        continue 'values;
                    }
                    if !parser.eat(b']') {
                        return parser.error("expected `,` or `]`");
                    }
                    let Some(Building::Array(items)) = stack.pop() else {
                        return invalid("internal: array expected");
                    };
                    value = items.encode(env);
                }
                Some(Building::Object { keys, values }) => {
                    values.push(value);
                    if parser.eat(b',') {
                        parser.skip_whitespace();
                        keys.push(parser.key(env)?);
                        continue 'values;
                    }
                    if !parser.eat(b'}') {
                        return parser.error("expected `,` or `}`");
                    }
                    let Some(Building::Object { keys, values }) = stack.pop() else {
                        return invalid("internal: object expected");
                    };
                    value = object(env, &keys, &values)?;
                }
            }
        }
    }
}

/// A map from the pairs read; on duplicate keys the last one wins, as in
/// Jason.
fn object<'a>(env: Env<'a>, keys: &[Term<'a>], values: &[Term<'a>]) -> Result<Term<'a>, Failure> {
    if let Ok(map) = Term::map_from_term_arrays(env, keys, values) {
        return Ok(map);
    }
    let mut map = rustler::types::map::map_new(env);
    for (key, value) in keys.iter().zip(values) {
        map = map
            .map_put(*key, *value)
            .or_else(|_| invalid("unreadable object"))?;
    }
    Ok(map)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// `reason at line L column C`, like serde_json's messages.
    fn error<T>(&self, reason: &str) -> Result<T, Failure> {
        let before = self.bytes.get(..self.pos).unwrap_or(self.bytes);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        if self.pos >= self.bytes.len() {
            return invalid(format!(
                "EOF while parsing: {reason} at line {line} column {column}"
            ));
        }
        invalid(format!("{reason} at line {line} column {column}"))
    }

    /// An object key and the `:` after it.
    fn key<'a>(&mut self, env: Env<'a>) -> Result<Term<'a>, Failure> {
        if !self.eat(b'"') {
            return self.error("expected a string key");
        }
        let key = self.string(env)?;
        self.skip_whitespace();
        if !self.eat(b':') {
            return self.error("expected `:`");
        }
        Ok(key)
    }

    fn scalar<'a>(&mut self, env: Env<'a>) -> Result<Term<'a>, Failure> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.string(env)
            }
            Some(b't') => self.literal(b"true", true.encode(env)),
            Some(b'f') => self.literal(b"false", false.encode(env)),
            Some(b'n') => self.literal(b"null", atoms::nil().encode(env)),
            Some(b'-' | b'0'..=b'9') => self.number(env),
            None => self.error("expected a value"),
            Some(_) => self.error("expected a value"),
        }
    }

    fn literal<'a>(&mut self, word: &[u8], value: Term<'a>) -> Result<Term<'a>, Failure> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.error("expected a value")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`: an integer
    /// (any size, exact) without fraction and exponent, else a float.
    fn number<'a>(&mut self, env: Env<'a>) -> Result<Term<'a>, Failure> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.error("invalid number"),
        }
        let mut float = false;
        if self.eat(b'.') {
            float = true;
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            float = true;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        let Some(text) = self
            .bytes
            .get(start..self.pos)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
        else {
            return self.error("invalid number");
        };
        if float {
            return match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x.encode(env)),
                _ => self.error("number out of range"),
            };
        }
        // `-0` parses as the integer 0, like Jason.
        if let Ok(n) = text.parse::<i64>() {
            return Ok(n.encode(env));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Ok(n.encode(env));
        }
        if self.limited && text.len() > NORMAL_MAX_DIGITS {
            return Err(Failure::OverBudget);
        }
        match text.parse::<BigInt>() {
            Ok(n) => Ok(n.encode(env)),
            Err(_) => self.error("invalid number"),
        }
    }

    /// The rest of a string whose opening `"` was read.
    fn string<'a>(&mut self, env: Env<'a>) -> Result<Term<'a>, Failure> {
        let start = self.pos;
        // Most strings have no escape: then the text is the input slice.
        loop {
            match self.peek() {
                Some(b'"') => {
                    let raw = self.bytes.get(start..self.pos).unwrap_or_default();
                    self.pos += 1;
                    return self.text_term(env, raw);
                }
                Some(b'\\') => break,
                Some(0..=0x1F) => return self.error("control character in string"),
                Some(_) => self.pos += 1,
                None => return self.error("unterminated string"),
            }
        }
        let mut text = self.bytes.get(start..self.pos).unwrap_or_default().to_vec();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return self.text_term(env, &text);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut text)?;
                }
                Some(0..=0x1F) => return self.error("control character in string"),
                Some(byte) => {
                    text.push(byte);
                    self.pos += 1;
                }
                None => return self.error("unterminated string"),
            }
        }
    }

    fn text_term<'a>(&self, env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Failure> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.encode(env)),
            Err(_) => self.error("invalid UTF-8 in string"),
        }
    }

    /// One escape sequence, after its `\`.
    fn escape(&mut self, text: &mut Vec<u8>) -> Result<(), Failure> {
        let Some(byte) = self.peek() else {
            return self.error("unterminated string");
        };
        self.pos += 1;
        let simple = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode_escape(text),
            _ => return self.error("invalid escape"),
        };
        text.push(simple);
        Ok(())
    }

    /// `\uXXXX`, or a surrogate pair `\uD8XX\uDCXX`; a lone surrogate is an
    /// error (it is no character).
    fn unicode_escape(&mut self, text: &mut Vec<u8>) -> Result<(), Failure> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return self.error("lone leading surrogate in hex escape");
                }
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return self.error("invalid surrogate pair in hex escape");
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return self.error("lone trailing surrogate in hex escape"),
            code => code,
        };
        let Some(character) = char::from_u32(code) else {
            return self.error("invalid hex escape");
        };
        let mut buffer = [0; 4];
        text.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Failure> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            return self.error("invalid hex escape");
        };
        let Some(code) = std::str::from_utf8(digits)
            .ok()
            .filter(|text| text.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|text| u32::from_str_radix(text, 16).ok())
        else {
            return self.error("invalid hex escape");
        };
        self.pos += 4;
        Ok(code)
    }
}
