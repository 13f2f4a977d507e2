//! Terms in and out of the broker NIFs, with no broker's meaning: channel
//! names, publish options and settings become the broker crate's generic
//! `Name`, `Data` and `Given`; its events and `Data` become messages.
//!
//! Every size the caller's term decides is bounded before it is used
//! (nesting depth, items), so no term can make this code recurse or
//! allocate without limit.
use std::borrow::Cow;

use rustler::types::binary::NewBinary;
use rustler::types::map::MapIterator;
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Binary, Encoder, Env, Term, TermType};
use yggdrasil_brokers::settings::Value;
use yggdrasil_brokers::{Data, Event, Given, Name, Raw};

use super::{atoms, reply_tags};

/// Nesting allowed in a channel name or a publish option (`{exchange, key}`
/// is depth 2; headers are a map in an option, depth 3).
const MAX_DEPTH: usize = 8;
/// Items in one list, tuple or map of a publish option.
const MAX_ITEMS: usize = 4096;

/// What one channel name's tuples, or one publish's options, may expand to
/// in all: a term can hold the same large binary in many places at the cost
/// of one, and each place is a copy here. Names in tuples are RabbitMQ's
/// (two strings of 255 bytes at most); AMQP properties fit in a frame.
const MAX_TOTAL_ITEMS: usize = 4096;
const MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// Items and bytes a term may still expand to.
struct Budget {
    items: usize,
    bytes: usize,
}

impl Budget {
    fn new() -> Self {
        Budget {
            items: MAX_TOTAL_ITEMS,
            bytes: MAX_TOTAL_BYTES,
        }
    }

    /// Takes one item of `bytes` bytes; `false` when that is past the budget.
    fn take(&mut self, bytes: usize) -> bool {
        match (self.items.checked_sub(1), self.bytes.checked_sub(bytes)) {
            (Some(items), Some(left)) => {
                (self.items, self.bytes) = (items, left);
                true
            }
            _ => false,
        }
    }
}

/// A channel name: a binary, or tuples of binaries; anything else is
/// `Name::Other`, which every broker refuses with its own explanation. A
/// binary name is copied whatever its size (the broker judges it); tuples
/// are copied within a [`Budget`], past which they are `Name::Other` too.
pub(super) fn name(term: Term<'_>) -> Name {
    if let Ok(binary) = term.decode::<Binary>() {
        return Name::Bytes(binary.as_slice().to_vec());
    }
    name_at(term, 0, &mut Budget::new()).unwrap_or(Name::Other)
}

/// `None` once past the budget.
fn name_at(term: Term<'_>, depth: usize, budget: &mut Budget) -> Option<Name> {
    if let Ok(binary) = term.decode::<Binary>() {
        return budget
            .take(binary.len())
            .then(|| Name::Bytes(binary.as_slice().to_vec()));
    }
    match get_tuple(term) {
        Ok(parts) if depth < MAX_DEPTH && parts.len() <= MAX_ITEMS && budget.take(0) => {
            Some(Name::Tuple(
                parts
                    .into_iter()
                    .map(|part| name_at(part, depth + 1, budget))
                    .collect::<Option<_>>()?,
            ))
        }
        _ if budget.take(0) => Some(Name::Other),
        _ => None,
    }
}

/// `publish/3` options: a map with atom keys.
pub(super) fn options(map: Term<'_>) -> Result<Vec<(String, Data)>, String> {
    let iter = MapIterator::new(map).ok_or("publish options must be a map")?;
    let mut budget = Budget::new();
    iter.map(|(key, value)| {
        let key = key
            .atom_to_string()
            .map_err(|_| "publish option names must be atoms".to_owned())?;
        let value =
            data(value, 0, &mut budget).map_err(|why| format!("publish option :{key}: {why}"))?;
        Ok((key, value))
    })
    .collect()
}

fn data(term: Term<'_>, depth: usize, budget: &mut Budget) -> Result<Data, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let size = term.decode::<Binary>().map_or(0, |binary| binary.len());
    if !budget.take(size) {
        return Err(format!(
            "the options hold more than {MAX_TOTAL_ITEMS} items or {MAX_TOTAL_BYTES} bytes in all"
        ));
    }
    let too_many = || format!("more than {MAX_ITEMS} items");
    Ok(match term.get_type() {
        TermType::Atom => match term.atom_to_string() {
            Ok(atom) if atom == "nil" => Data::Nil,
            Ok(atom) if atom == "true" => Data::Bool(true),
            Ok(atom) if atom == "false" => Data::Bool(false),
            Ok(atom) => Data::Atom(Cow::Owned(atom)),
            Err(_) => return Err("an atom that cannot be read".to_owned()),
        },
        TermType::Binary => Data::Bytes(
            term.decode::<Binary>()
                .map_err(|_| "a bitstring that is not a binary".to_owned())?
                .as_slice()
                .to_vec(),
        ),
        TermType::Integer => Data::Int(
            term.decode::<i64>()
                .map_err(|_| "an integer beyond 64 bits".to_owned())?,
        ),
        TermType::Float => Data::Float(term.decode::<f64>().map_err(|_| "a float".to_owned())?),
        TermType::List => {
            // Cell by cell: a long list is refused after MAX_ITEMS cells, not read whole first.
            let mut items = Vec::new();
            let mut rest = term;
            while !rest.is_empty_list() {
                let (item, tail) = rest
                    .list_get_cell()
                    .map_err(|_| "an improper list".to_owned())?;
                if items.len() == MAX_ITEMS {
                    return Err(too_many());
                }
                items.push(data(item, depth + 1, budget)?);
                rest = tail;
            }
            Data::List(items)
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| "a tuple".to_owned())?;
            if items.len() > MAX_ITEMS {
                return Err(too_many());
            }
            Data::Tuple(
                items
                    .into_iter()
                    .map(|item| data(item, depth + 1, budget))
                    .collect::<Result<_, _>>()?,
            )
        }
        TermType::Map => {
            if term.map_size().unwrap_or(usize::MAX) > MAX_ITEMS {
                return Err(too_many());
            }
            let iter = MapIterator::new(term).ok_or("a map")?;
            Data::Map(
                iter.map(|(k, v)| Ok((data(k, depth + 1, budget)?, data(v, depth + 1, budget)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        _ => return Err("a pid, port, reference or fun, which no broker can carry".to_owned()),
    })
}

/// Settings as `Yggdrasil.Config` gathered them: `[{key, origin, value}]`,
/// where `value` is a binary, an integer, a boolean, another atom, or
/// `{:inspected, text}` for anything else (described in errors).
pub(super) fn given(list: Term<'_>) -> Result<Vec<Given>, String> {
    let bad = || "broker settings must be a list of {key, origin, value}".to_owned();
    let items: Vec<(Atom, String, Term<'_>)> = list.decode().map_err(|_| bad())?;
    items
        .into_iter()
        .map(|(key, origin, value)| {
            let key = key
                .to_term(list.get_env())
                .atom_to_string()
                .map_err(|_| bad())?;
            Ok(Given {
                key,
                origin,
                value: raw(value),
            })
        })
        .collect()
}

fn raw(term: Term<'_>) -> Raw {
    if let Ok(binary) = term.decode::<Binary>() {
        return match std::str::from_utf8(binary.as_slice()) {
            Ok(text) => Raw::Text(text.to_owned()),
            Err(_) => Raw::Other("a binary that is not UTF-8".to_owned()),
        };
    }
    if let Ok(int) = term.decode::<i64>() {
        return Raw::Int(int);
    }
    if let Ok(b) = term.decode::<bool>() {
        return Raw::Bool(b);
    }
    if let Ok(atom) = term.atom_to_string() {
        return Raw::Atom(atom);
    }
    if let Ok((tag, text)) = term.decode::<(Atom, String)>() {
        if tag == atoms::inspected() {
            return Raw::Other(text);
        }
    }
    Raw::Other("a term of another type".to_owned())
}

/// Checked settings as a keyword list (secrets included: the caller asked).
pub(super) fn settings<'a>(env: Env<'a>, values: &[(&'static str, Value)]) -> Term<'a> {
    let pairs: Vec<Term<'a>> = values
        .iter()
        .map(|(key, value)| {
            let key = Atom::from_str(env, key)
                .map_or_else(|_| atoms::nil().encode(env), |a| a.encode(env));
            let value = match value {
                Value::Nil => atoms::nil().encode(env),
                Value::Text(text) => text.encode(env),
                Value::Secret(secret) => secret.expose().encode(env),
                Value::Int(i) => i.encode(env),
                Value::Bool(b) => b.encode(env),
            };
            (key, value).encode(env)
        })
        .collect();
    pairs.encode(env)
}

/// The message an event becomes (`Yggdrasil.Native` lists them).
pub(super) fn message(env: Env<'_>, event: Event) -> Term<'_> {
    let tag = atoms::tag();
    match event {
        Event::Connected { .. } => (tag, atoms::connected()).encode(env),
        Event::Disconnected { .. } => (tag, atoms::disconnected()).encode(env),
        Event::Message {
            payload, metadata, ..
        } => (
            tag,
            atoms::event(),
            bytes(env, &payload),
            encode(env, &metadata),
        )
            .encode(env),
        Event::Published { tag: id, result } => {
            let result = match result {
                Ok(()) => atoms::ok().encode(env),
                Err(reason) => (atoms::error(), reason).encode(env),
            };
            (tag, atoms::published(), reply_tags::take(env, id), result).encode(env)
        }
        Event::Warning { message } => (tag, atoms::warning(), message).encode(env),
    }
}

pub(super) fn bytes<'a>(env: Env<'a>, data: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, data.len());
    binary.as_mut_slice().copy_from_slice(data);
    Binary::from(binary).encode(env)
}

/// `Data` as a term. Built by the broker crate from what the broker sent,
/// bounded there; recursion follows its (small, fixed) shape.
pub(super) fn encode<'a>(env: Env<'a>, data: &Data) -> Term<'a> {
    match data {
        Data::Nil => atoms::nil().encode(env),
        Data::Bool(b) => b.encode(env),
        Data::Int(i) => i.encode(env),
        Data::Float(f) => f.encode(env),
        Data::Bytes(b) => bytes(env, b),
        Data::Atom(atom) => {
            Atom::from_str(env, atom).map_or_else(|_| atoms::nil().encode(env), |a| a.encode(env))
        }
        Data::List(items) => items
            .iter()
            .map(|item| encode(env, item))
            .collect::<Vec<_>>()
            .encode(env),
        Data::Tuple(items) => {
            let items: Vec<Term<'a>> = items.iter().map(|item| encode(env, item)).collect();
            rustler::types::tuple::make_tuple(env, &items)
        }
        Data::Map(pairs) => pairs.iter().fold(Term::map_new(env), |map, (k, v)| {
            map.map_put(encode(env, k), encode(env, v)).unwrap_or(map)
        }),
    }
}
