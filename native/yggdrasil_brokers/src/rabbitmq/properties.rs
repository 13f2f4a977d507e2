//! `publish/3` options as AMQP properties, and the headers of a delivery as
//! event metadata.
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::Data;

/// AMQP short strings (names, property values, header keys).
pub(super) const AMQP_MAX_SHORTSTR: usize = 255;

pub(super) fn short(value: &str) -> Result<ShortString, String> {
    ShortString::try_new(value).map_err(|_| {
        let start: String = value.chars().take(20).collect();
        format!(
            "{start:?}... is {} bytes, longer than an AMQP short string ({AMQP_MAX_SHORTSTR})",
            value.len()
        )
    })
}

/// The AMQP properties of a publish, from its options (atom keys): text
/// properties, `priority` (0..255), `timestamp` (seconds), `persistent`
/// and `headers` (a map or keyword list of atom or binary keys to binary,
/// integer, float or boolean values).
pub(super) fn from_options(options: &[(String, Data)]) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    for (key, value) in options {
        let bad = |what: &str| format!("publish option :{key} must be {what}");
        let text = || match value {
            Data::Bytes(bytes) => std::str::from_utf8(bytes)
                .map_err(|_| bad("a UTF-8 binary"))
                .and_then(|text| short(text).map_err(|why| format!("publish option :{key}: {why}"))),
            _ => Err(bad("a UTF-8 binary")),
        };
        p = match key.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "message_id" => p.with_message_id(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "priority" => match value {
                Data::Int(i) => p.with_priority(u8::try_from(*i).map_err(|_| bad("0..255"))?),
                _ => return Err(bad("0..255")),
            },
            "timestamp" => match value {
                Data::Int(i) => p.with_timestamp(
                    u64::try_from(*i).map_err(|_| bad("a non-negative integer (seconds)"))?,
                ),
                _ => return Err(bad("a non-negative integer (seconds)")),
            },
            "persistent" => match value {
                Data::Bool(true) => p.with_delivery_mode(2),
                Data::Bool(false) => p,
                _ => return Err(bad("a boolean")),
            },
            "headers" => p.with_headers(headers(value).map_err(|what| bad(&what))?),
            _ => return Err(format!("unknown publish option :{key}")),
        };
    }
    Ok(p)
}

fn headers(value: &Data) -> Result<FieldTable, String> {
    let expected = || {
        "a map or keyword list of atom or binary keys to binary, integer, float or boolean values"
            .to_owned()
    };
    let pairs: Vec<(&Data, &Data)> = match value {
        Data::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Data::List(items) => items
            .iter()
            .map(|item| match item {
                Data::Tuple(kv) => match kv.as_slice() {
                    [k, v] => Ok((k, v)),
                    _ => Err(expected()),
                },
                _ => Err(expected()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(expected()),
    };
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        let key = match key {
            Data::Atom(atom) => atom.to_string(),
            Data::Bytes(bytes) => String::from_utf8(bytes.clone()).map_err(|_| expected())?,
            _ => return Err(expected()),
        };
        let value = match value {
            Data::Bytes(bytes) => AMQPValue::LongString(LongString::from(bytes.clone())),
            Data::Int(i) => AMQPValue::LongLongInt(*i),
            Data::Float(f) => AMQPValue::Double(*f),
            Data::Bool(b) => AMQPValue::Boolean(*b),
            _ => return Err(expected()),
        };
        table.insert(short(&key)?, value);
    }
    Ok(table)
}

/// A delivery's headers as a map of binary keys. Tables, arrays and void
/// (other AMQP clients may send them) have no such kind and are left out.
pub(super) fn headers_data(table: &FieldTable) -> Data {
    Data::Map(
        table
            .inner()
            .iter()
            .filter_map(|(key, value)| Some((Data::text(key.to_string()), scalar(value)?)))
            .collect(),
    )
}

/// Every scalar an AMQP header can hold, as a binary, integer, float or boolean.
fn scalar(value: &AMQPValue) -> Option<Data> {
    Some(match value {
        AMQPValue::Boolean(b) => Data::Bool(*b),
        AMQPValue::ShortShortInt(i) => Data::Int((*i).into()),
        AMQPValue::ShortShortUInt(i) => Data::Int((*i).into()),
        AMQPValue::ShortInt(i) => Data::Int((*i).into()),
        AMQPValue::ShortUInt(i) => Data::Int((*i).into()),
        AMQPValue::LongInt(i) => Data::Int((*i).into()),
        AMQPValue::LongUInt(i) => Data::Int((*i).into()),
        AMQPValue::LongLongInt(i) => Data::Int(*i),
        AMQPValue::Timestamp(t) => match i64::try_from(*t) {
            Ok(i) => Data::Int(i),
            Err(_) => Data::Float(*t as f64),
        },
        AMQPValue::Float(f) => Data::Float((*f).into()),
        AMQPValue::Double(f) => Data::Float(*f),
        AMQPValue::DecimalValue(d) => {
            Data::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Data::text(s.as_str()),
        AMQPValue::LongString(s) => Data::Bytes(s.as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Data::Bytes(b.as_slice().to_vec()),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) | AMQPValue::Void => return None,
    })
}
