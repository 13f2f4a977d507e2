//! What crosses the API besides payloads, with no broker's meaning in it:
//! channel names as the caller gave them, and the small terms a broker
//! attaches to an event (metadata) or takes with a publish (properties).
//! Each broker module decides what its names and properties may be.
use std::borrow::Cow;
use std::fmt;

/// A channel name: a binary, or a tuple of names (`{exchange, routing_key}`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Name {
    Bytes(Vec<u8>),
    Tuple(Vec<Name>),
    /// Any other term: no broker takes it, and each says what it expects.
    Other,
}

impl Name {
    /// `{a, b}` of two binaries.
    pub fn pair(a: impl Into<Vec<u8>>, b: impl Into<Vec<u8>>) -> Name {
        Name::Tuple(vec![Name::Bytes(a.into()), Name::Bytes(b.into())])
    }

    /// The bytes of a binary name.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Name::Bytes(bytes) => Some(bytes),
            Name::Tuple(_) | Name::Other => None,
        }
    }

    /// A binary name as UTF-8 text.
    pub fn text(&self) -> Option<&str> {
        self.bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::Bytes(text.as_bytes().to_vec())
    }
}

impl fmt::Debug for Name {
    /// As a user wrote it: `"orders.*"`, `{"amq.topic", "key"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Bytes(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Name::Tuple(parts) => {
                f.write_str("{")?;
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{part:?}")?;
                }
                f.write_str("}")
            }
            Name::Other => f.write_str("(not a binary or tuple)"),
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A small term: event metadata (`%{channel: "orders.new"}`) and publish
/// properties (`[content_type: "text/plain", headers: %{...}]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Atom(Cow<'static, str>),
    List(Vec<Data>),
    Tuple(Vec<Data>),
    Map(Vec<(Data, Data)>),
}

impl Data {
    /// A map with atom keys (event metadata).
    pub fn fields(fields: impl IntoIterator<Item = (&'static str, Data)>) -> Data {
        Data::Map(
            fields
                .into_iter()
                .map(|(key, value)| (Data::Atom(Cow::Borrowed(key)), value))
                .collect(),
        )
    }

    /// The value under the atom key `key` of a map.
    pub fn field(&self, key: &str) -> Option<&Data> {
        match self {
            Data::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Data::Atom(atom) if atom == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// `Bytes` of UTF-8 text.
    pub fn text(text: impl Into<String>) -> Data {
        Data::Bytes(text.into().into_bytes())
    }
}
