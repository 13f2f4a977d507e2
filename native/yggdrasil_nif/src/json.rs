//! JSON for the `:json` transformer, with the mapping Elixir users know from
//! Jason: maps ↔ objects (decoded keys are binaries), lists ↔ arrays,
//! binaries ↔ strings, `nil` ↔ `null`, booleans, numbers; other atoms encode
//! as strings. Anything else (tuples, pids, structs, non-UTF-8 binaries,
//! integers beyond 64 bits, improper lists) is an error, never a crash.

use rustler::types::map::MapIterator;
use rustler::{Encoder, Env, Term, TermType};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::cell::Cell;

/// Nesting deeper than this is refused (the recursion must stay well within
/// a scheduler thread's stack).
const MAX_DEPTH: usize = 128;

pub enum EncodeError {
    /// The term is larger than the budget allowed for this call.
    OverBudget,
    Invalid(String),
}

/// Encodes `term`, visiting at most `budget` nodes (`None`: no limit).
pub fn encode(term: Term<'_>, budget: Option<usize>) -> Result<Vec<u8>, EncodeError> {
    let walk = Walk {
        budget: Cell::new(budget.unwrap_or(usize::MAX)),
        over_budget: Cell::new(false),
    };
    match serde_json::to_vec(&Node {
        term,
        depth: 0,
        walk: &walk,
    }) {
        Ok(bytes) => Ok(bytes),
        Err(_) if walk.over_budget.get() => Err(EncodeError::OverBudget),
        Err(error) => Err(EncodeError::Invalid(error.to_string())),
    }
}

struct Walk {
    budget: Cell<usize>,
    over_budget: Cell<bool>,
}

struct Node<'w, 'a> {
    term: Term<'a>,
    depth: usize,
    walk: &'w Walk,
}

impl<'a> Node<'_, 'a> {
    fn child(&self, term: Term<'a>) -> Node<'_, 'a> {
        Node {
            term,
            depth: self.depth + 1,
            walk: self.walk,
        }
    }
}

impl Serialize for Node<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let left = self.walk.budget.get();
        if left == 0 {
            self.walk.over_budget.set(true);
            return Err(S::Error::custom("term too large for one call"));
        }
        self.walk.budget.set(left - 1);
        if self.depth > MAX_DEPTH {
            return Err(S::Error::custom("nesting too deep"));
        }
        let term = self.term;
        match term.get_type() {
            TermType::Atom => match term.atom_to_string() {
                Ok(name) if name == "nil" => serializer.serialize_unit(),
                Ok(name) if name == "true" => serializer.serialize_bool(true),
                Ok(name) if name == "false" => serializer.serialize_bool(false),
                Ok(name) => serializer.serialize_str(&name),
                Err(_) => Err(S::Error::custom("unreadable atom")),
            },
            TermType::Binary => match term.decode::<&str>() {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => Err(S::Error::custom("binary is not valid UTF-8")),
            },
            TermType::Integer => {
                if let Ok(n) = term.decode::<i64>() {
                    serializer.serialize_i64(n)
                } else if let Ok(n) = term.decode::<u64>() {
                    serializer.serialize_u64(n)
                } else {
                    Err(S::Error::custom("integer does not fit in 64 bits"))
                }
            }
            TermType::Float => match term.decode::<f64>() {
                Ok(x) => serializer.serialize_f64(x),
                Err(_) => Err(S::Error::custom("unreadable float")),
            },
            TermType::List => {
                // Walked cell by cell rather than with rustler's
                // `ListIterator`, which panics on an improper tail; each
                // element also counts against the node budget, so a huge
                // list is never walked to its end on a normal scheduler.
                let mut seq = serializer.serialize_seq(None)?;
                let mut rest = term;
                while !rest.is_empty_list() {
                    let Ok((item, tail)) = rest.list_get_cell() else {
                        return Err(S::Error::custom("improper list"));
                    };
                    seq.serialize_element(&self.child(item))?;
                    rest = tail;
                }
                seq.end()
            }
            TermType::Map => {
                let env = term.get_env();
                if term
                    .map_get(rustler::types::atom::__struct__().encode(env))
                    .is_ok()
                {
                    return Err(S::Error::custom("structs cannot be encoded as JSON"));
                }
                let Some(entries) = MapIterator::new(term) else {
                    return Err(S::Error::custom("unreadable map"));
                };
                let mut map = serializer.serialize_map(None)?;
                for (key, value) in entries {
                    map.serialize_key(&key_text(key).map_err(S::Error::custom)?)?;
                    map.serialize_value(&self.child(value))?;
                }
                map.end()
            }
            other => Err(S::Error::custom(format!(
                "{} cannot be encoded as JSON",
                type_name(other)
            ))),
        }
    }
}

/// Object keys: binaries, atoms and numbers become strings, as in Jason.
fn key_text(key: Term<'_>) -> Result<String, &'static str> {
    match key.get_type() {
        TermType::Binary => key
            .decode::<&str>()
            .map(str::to_owned)
            .map_err(|_| "map key is not valid UTF-8"),
        TermType::Atom => key.atom_to_string().map_err(|_| "unreadable atom key"),
        TermType::Integer => key
            .decode::<i64>()
            .map(|n| n.to_string())
            .map_err(|_| "integer key does not fit in 64 bits"),
        _ => Err("map keys must be binaries, atoms or integers"),
    }
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

/// Decodes JSON text into terms; errors carry serde_json's position message.
pub fn decode<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    to_term(env, &value)
}

fn to_term<'a>(env: Env<'a>, value: &Value) -> Result<Term<'a>, String> {
    Ok(match value {
        Value::Null => rustler::types::atom::nil().encode(env),
        Value::Bool(flag) => flag.encode(env),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64()
                    .ok_or_else(|| format!("number {n} is not representable"))?
                    .encode(env)
            }
        }
        Value::String(text) => text.as_str().encode(env),
        Value::Array(items) => {
            let terms = items
                .iter()
                .map(|item| to_term(env, item))
                .collect::<Result<Vec<_>, _>>()?;
            terms.encode(env)
        }
        Value::Object(fields) => {
            let mut keys = Vec::with_capacity(fields.len());
            let mut values = Vec::with_capacity(fields.len());
            for (key, value) in fields {
                keys.push(key.as_str().encode(env));
                values.push(to_term(env, value)?);
            }
            Term::map_from_term_arrays(env, &keys, &values)
                .map_err(|_| "duplicate object key".to_string())?
        }
    })
}

// The NIFs of the `:json` transformer. A term above the node budget is
// refused with `:too_big` on a normal scheduler, so that `Yggdrasil.Engine`
// retries it on a dirty one.

mod atoms {
    rustler::atoms! { ok, error, too_big }
}

/// Budget of JSON nodes on a normal scheduler; larger terms go dirty.
const JSON_NODE_BUDGET: usize = 20_000;

fn json_encode_with<'a>(env: Env<'a>, term: Term<'a>, budget: Option<usize>) -> Term<'a> {
    match encode(term, budget) {
        Ok(bytes) => {
            let mut binary = rustler::types::binary::NewBinary::new(env, bytes.len());
            binary.as_mut_slice().copy_from_slice(&bytes);
            (atoms::ok(), rustler::Binary::from(binary)).encode(env)
        }
        Err(EncodeError::OverBudget) => atoms::too_big().encode(env),
        Err(EncodeError::Invalid(reason)) => (atoms::error(), reason).encode(env),
    }
}

/// `{:ok, json}`, `{:error, reason}`, or `:too_big` when the term should be
/// encoded on a dirty scheduler instead.
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    json_encode_with(env, term, Some(JSON_NODE_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    json_encode_with(env, term, None)
}

fn json_decode_with<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Term<'a> {
    match decode(env, text.as_slice()) {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Term<'a> {
    json_decode_with(env, text)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode_dirty<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Term<'a> {
    json_decode_with(env, text)
}
