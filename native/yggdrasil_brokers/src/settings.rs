//! A broker's settings: the keys it takes, what each value may be, and the
//! one place where what a user configured becomes typed values.
//!
//! The caller (the NIF, for the Elixir side) gathers each key's value from
//! wherever section 10 of the contract says to look (environment variables,
//! namespaced and global config) and hands over, per key, the value and
//! where it came from ([`Given`]). [`resolve`] checks every value against
//! the broker's schema (its own [`Key`]s plus [`COMMON_KEYS`]), fills in
//! defaults, applies a `url`, and either gives [`Settings`] or an error that
//! names the key and where it was set. A secret's value never appears in an
//! error.
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "net")]
use crate::tls::{Tls, TlsSettings, Verify};
use crate::url::BrokerUrl;
use crate::{Error, Secret};

/// A value as the user wrote it, before the schema gave it a type.
/// Environment variables arrive as `Text`; config entries as what they are.
#[derive(Clone, PartialEq)]
pub enum Raw {
    Text(String),
    Int(i64),
    Bool(bool),
    /// An atom other than `true`/`false`/`nil` (`:verify_none`).
    Atom(String),
    /// Anything else, described for the error message (never a secret's value).
    Other(String),
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Text(text) => write!(f, "{text:?}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Atom(atom) => write!(f, ":{atom}"),
            Raw::Other(described) => f.write_str(described),
        }
    }
}

/// One configured key: its name, where it was set (for errors: "environment
/// variable YGGDRASIL_<BROKER>_PORT"), and its value.
#[derive(Clone, Debug)]
pub struct Given {
    pub key: String,
    pub origin: String,
    pub value: Raw,
}

impl Given {
    /// A key set in code (tests, tools): its origin is just the key's name.
    pub fn new(key: &str, value: Raw) -> Self {
        Given {
            key: key.to_owned(),
            origin: format!("setting `{key}`"),
            value,
        }
    }
}

/// What values a key takes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A non-empty string (host names).
    Host,
    /// Any string; `None` allowed when the default is.
    Text,
    /// A string never shown in errors or `Debug` (passwords, URLs with userinfo).
    Secret,
    /// An integer within bounds (strings are parsed).
    Int { min: i64, max: i64 },
    /// `true`/`false` (from the environment: "true"/"false").
    Bool,
    /// One of these names, as an atom or a string.
    Choice(&'static [&'static str]),
}

/// A port number.
pub const PORT: Kind = Kind::Int {
    min: 1,
    max: 65_535,
};
/// Milliseconds a timer can hold (1..2³²-1).
pub const MILLIS: Kind = Kind::Int {
    min: 1,
    max: u32::MAX as i64,
};

/// A typed, checked value.
#[derive(Clone, PartialEq)]
pub enum Value {
    Nil,
    Text(String),
    Secret(Secret),
    Int(i64),
    Bool(bool),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Text(text) => write!(f, "{text:?}"),
            Value::Secret(secret) => write!(f, "{secret:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One key of a broker's schema.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// `None`: the key is unset (`nil`) unless configured.
    pub default: Preset,
}

/// A key's default, as a constant.
#[derive(Clone, Copy, Debug)]
pub enum Preset {
    Nil,
    Text(&'static str),
    Int(i64),
    Bool(bool),
}

impl Preset {
    fn value(self, kind: Kind) -> Value {
        match (self, kind) {
            (Preset::Nil, _) => Value::Nil,
            (Preset::Text(text), Kind::Secret) => Value::Secret(Secret::new(text)),
            (Preset::Text(text), _) => Value::Text(text.to_owned()),
            (Preset::Int(i), _) => Value::Int(i),
            (Preset::Bool(b), _) => Value::Bool(b),
        }
    }
}

impl Key {
    pub const fn new(name: &'static str, kind: Kind, default: Preset) -> Self {
        Key {
            name,
            kind,
            default,
        }
    }
}

/// The `tls_verify` values (section 10.1).
pub const VERIFY: &[&str] = &["verify_peer", "verify_none"];

/// Keys every broker takes, after its own (sections 10 and 10.1).
pub const COMMON_KEYS: &[Key] = &[
    Key::new("publish_timeout", MILLIS, Preset::Int(5000)),
    Key::new("backoff_max", MILLIS, Preset::Int(5000)),
    Key::new("idle_timeout", MILLIS, Preset::Int(30_000)),
    Key::new("url", Kind::Secret, Preset::Nil),
    Key::new("tls", Kind::Bool, Preset::Bool(false)),
    Key::new("tls_cacertfile", Kind::Text, Preset::Nil),
    Key::new("tls_certfile", Kind::Text, Preset::Nil),
    Key::new("tls_keyfile", Kind::Text, Preset::Nil),
    Key::new(
        "tls_verify",
        Kind::Choice(VERIFY),
        Preset::Text("verify_peer"),
    ),
    Key::new("tls_server_name", Kind::Text, Preset::Nil),
];

/// What a URL sets: keys and their values.
pub type UrlValues = Vec<(&'static str, Value)>;

/// What a broker module tells the generic layer about its settings.
pub struct Schema {
    /// The broker's own keys, in the order its documentation lists them.
    pub(crate) keys: &'static [Key],
    /// URL schemes it accepts (plaintext and TLS forms).
    pub(crate) url_schemes: &'static [&'static str],
    /// The values a parsed `url` sets (every key the URL form covers, with
    /// the key's default where the URL says nothing).
    pub(crate) from_url: fn(BrokerUrl) -> Result<UrlValues, Error>,
}

impl Schema {
    /// The broker's keys, then the common ones.
    pub fn all_keys(&self) -> impl Iterator<Item = &'static Key> {
        self.keys.iter().chain(COMMON_KEYS)
    }

    fn key(&self, name: &str) -> Option<&'static Key> {
        self.all_keys().find(|key| key.name == name)
    }
}

/// Checked settings, every key of the schema present.
#[derive(Clone, Debug)]
pub struct Settings {
    /// In schema order: what `Yggdrasil.Config.broker_config/2` shows.
    values: Vec<(&'static str, Value)>,
    by_name: HashMap<&'static str, usize>,
}

/// Checks `given` against `schema`: unknown keys are ignored (a config
/// keyword list may hold other things), the last of a key's values wins.
pub fn resolve(schema: &Schema, given: &[Given]) -> Result<Settings, Error> {
    let mut values: Vec<(&'static str, Value)> = schema
        .all_keys()
        .map(|key| (key.name, key.default.value(key.kind)))
        .collect();
    let by_name: HashMap<&'static str, usize> = values
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i))
        .collect();
    let mut url_origin = None;
    for item in given {
        let Some(key) = schema.key(&item.key) else {
            continue;
        };
        if key.name == "url" {
            url_origin = Some(item.origin.as_str());
        }
        let value = cast(key, &item.value).map_err(|expected| {
            let got = match key.kind {
                Kind::Secret => String::new(),
                _ => format!(", got: {:?}", item.value),
            };
            Error::new(format!("{}: expected {expected}{got}", item.origin))
        })?;
        if let Some(&i) = by_name.get(key.name) {
            if let Some(slot) = values.get_mut(i) {
                slot.1 = value;
            }
        }
    }
    let mut settings = Settings { values, by_name };
    if let Some(url) = settings.secret("url")? {
        let in_origin = |e: Error| match url_origin {
            Some(origin) => Error::new(format!("{origin}: {e}")),
            None => e,
        };
        let parsed = crate::url::parse(url.expose(), schema.url_schemes).map_err(in_origin)?;
        for (name, value) in (schema.from_url)(parsed).map_err(in_origin)? {
            settings.set(name, value)?;
        }
    }
    Ok(settings)
}

fn cast(key: &Key, raw: &Raw) -> Result<Value, String> {
    match (key.kind, raw) {
        (Kind::Host, Raw::Text(text)) if !text.is_empty() => Ok(Value::Text(text.clone())),
        (Kind::Host, _) => Err("a host name".to_owned()),
        // An empty environment variable unsets a key that may be nil.
        (Kind::Text | Kind::Secret, Raw::Text(text))
            if text.is_empty() && matches!(key.default, Preset::Nil) =>
        {
            Ok(Value::Nil)
        }
        (Kind::Text, Raw::Text(text)) => Ok(Value::Text(text.clone())),
        (Kind::Text, _) => Err("a string".to_owned()),
        (Kind::Secret, Raw::Text(text)) => Ok(Value::Secret(Secret::new(text.clone()))),
        (Kind::Secret, _) => Err("a string".to_owned()),
        (Kind::Int { min, max }, raw) => {
            let expected = || match (min, max) {
                (1, 65_535) => "a port number (1..65535)".to_owned(),
                (1, 4_294_967_295) => "a positive number of milliseconds".to_owned(),
                (0, _) => "a non-negative integer".to_owned(),
                (1, _) => "a positive integer".to_owned(),
                _ => format!("an integer in {min}..{max}"),
            };
            let int = match raw {
                Raw::Int(i) => *i,
                Raw::Text(text) => text.trim().parse::<i64>().map_err(|_| expected())?,
                _ => return Err(expected()),
            };
            if (min..=max).contains(&int) {
                Ok(Value::Int(int))
            } else {
                Err(expected())
            }
        }
        (Kind::Bool, Raw::Bool(b)) => Ok(Value::Bool(*b)),
        (Kind::Bool, Raw::Text(text)) => match text.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("true or false".to_owned()),
        },
        (Kind::Bool, _) => Err("true or false".to_owned()),
        (Kind::Choice(names), Raw::Atom(name) | Raw::Text(name)) if names.contains(&&**name) => {
            Ok(Value::Text(name.clone()))
        }
        (Kind::Choice(names), _) => Err(format!("one of :{}", names.join(", :"))),
    }
}

impl Settings {
    /// Every key with its value, in schema order (secrets stay [`Secret`]s).
    pub fn values(&self) -> &[(&'static str, Value)] {
        &self.values
    }

    fn get(&self, name: &str) -> Result<&Value, Error> {
        self.by_name
            .get(name)
            .and_then(|&i| self.values.get(i))
            .map(|(_, value)| value)
            // A broker module asking for a key its schema lacks: a bug here,
            // reported instead of panicking.
            .ok_or_else(|| Error::new(format!("internal: no setting `{name}` in this schema")))
    }

    fn set(&mut self, name: &str, value: Value) -> Result<(), Error> {
        let i =
            self.by_name.get(name).copied().ok_or_else(|| {
                Error::new(format!("internal: no setting `{name}` in this schema"))
            })?;
        if let Some(slot) = self.values.get_mut(i) {
            slot.1 = value;
        }
        Ok(())
    }

    pub fn text(&self, name: &str) -> Result<String, Error> {
        self.opt_text(name)?
            .ok_or_else(|| Error::new(format!("`{name}` must be set")))
    }

    pub fn opt_text(&self, name: &str) -> Result<Option<String>, Error> {
        match self.get(name)? {
            Value::Text(text) => Ok(Some(text.clone())),
            Value::Secret(secret) => Ok(Some(secret.expose().to_owned())),
            _ => Ok(None),
        }
    }

    pub fn secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        match self.get(name)? {
            Value::Secret(secret) => Ok(Some(secret.clone())),
            Value::Text(text) => Ok(Some(Secret::new(text.clone()))),
            _ => Ok(None),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64, Error> {
        match self.get(name)? {
            Value::Int(i) => Ok(*i),
            _ => Err(Error::new(format!("`{name}` must be an integer"))),
        }
    }

    pub fn port(&self, name: &str) -> Result<u16, Error> {
        u16::try_from(self.int(name)?)
            .map_err(|_| Error::new(format!("`{name}` must be a port number")))
    }

    pub fn millis(&self, name: &str) -> Result<Duration, Error> {
        Ok(Duration::from_millis(self.int(name)?.unsigned_abs()))
    }

    /// The TLS keys of section 10.1 as a ready TLS configuration for `host`,
    /// or `None` when `tls` is off. Files are read now, so a bad one is an
    /// error naming its key.
    #[cfg(feature = "net")]
    pub(crate) fn tls(&self, host: &str) -> Result<Option<Tls>, Error> {
        if !self.bool("tls")? {
            return Ok(None);
        }
        let verify = match self.text("tls_verify")?.as_str() {
            "verify_none" => Verify::None,
            _ => Verify::Peer,
        };
        self.tls_config(host, verify).map(Some)
    }

    /// The TLS configuration with `verify` decided by the broker (its own TLS
    /// mode setting, where it has one).
    #[cfg(feature = "net")]
    pub(crate) fn tls_config(&self, host: &str, verify: Verify) -> Result<Tls, Error> {
        let path = |key| Ok::<_, Error>(self.opt_text(key)?.map(PathBuf::from));
        let settings = TlsSettings {
            cacertfile: path("tls_cacertfile")?,
            certfile: path("tls_certfile")?,
            keyfile: path("tls_keyfile")?,
            verify,
            server_name: self.opt_text("tls_server_name")?,
        };
        Tls::new(&settings, host)
    }

    pub fn bool(&self, name: &str) -> Result<bool, Error> {
        match self.get(name)? {
            Value::Bool(b) => Ok(*b),
            _ => Err(Error::new(format!("`{name}` must be true or false"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[Key] = &[
        Key::new("hostname", Kind::Host, Preset::Text("localhost")),
        Key::new("port", PORT, Preset::Int(6379)),
        Key::new("password", Kind::Secret, Preset::Nil),
    ];

    fn from_url(url: BrokerUrl) -> Result<Vec<(&'static str, Value)>, Error> {
        Ok(vec![
            ("hostname", Value::Text(url.host)),
            ("port", Value::Int(url.port.map_or(6379, i64::from))),
            ("password", url.password.map_or(Value::Nil, Value::Secret)),
        ])
    }

    const SCHEMA: Schema = Schema {
        keys: KEYS,
        url_schemes: &["test"],
        from_url,
    };

    fn env(key: &str, text: &str) -> Given {
        Given {
            key: key.to_owned(),
            origin: format!("environment variable TEST_{}", key.to_uppercase()),
            value: Raw::Text(text.to_owned()),
        }
    }

    #[test]
    fn defaults_then_given_values_typed() {
        let settings = resolve(&SCHEMA, &[]).unwrap();
        assert_eq!(settings.text("hostname").unwrap(), "localhost");
        assert_eq!(settings.port("port").unwrap(), 6379);
        assert_eq!(settings.secret("password").unwrap(), None);
        assert_eq!(
            settings.millis("publish_timeout").unwrap().as_millis(),
            5000
        );
        assert!(!settings.bool("tls").unwrap());
        assert_eq!(settings.text("tls_verify").unwrap(), "verify_peer");

        let given = [
            env("port", " 6380 "),
            env("tls", "true"),
            Given::new("tls_verify", Raw::Atom("verify_none".into())),
            Given::new("unknown", Raw::Int(1)),
        ];
        let settings = resolve(&SCHEMA, &given).unwrap();
        assert_eq!(settings.port("port").unwrap(), 6380);
        assert!(settings.bool("tls").unwrap());
        assert_eq!(settings.text("tls_verify").unwrap(), "verify_none");
    }

    #[test]
    fn errors_name_the_origin_and_never_a_secret() {
        let bad_port = resolve(&SCHEMA, &[env("port", "abc")]).unwrap_err();
        assert_eq!(
            bad_port.message(),
            "environment variable TEST_PORT: expected a port number (1..65535), got: \"abc\""
        );
        let bad_verify = resolve(
            &SCHEMA,
            &[Given::new("tls_verify", Raw::Atom("bogus".into()))],
        )
        .unwrap_err();
        assert!(bad_verify.message().contains(":verify_peer, :verify_none"));
        let bad_secret =
            resolve(&SCHEMA, &[Given::new("password", Raw::Int(1234567))]).unwrap_err();
        assert!(!bad_secret.message().contains("1234567"), "{bad_secret}");
        assert!(resolve(&SCHEMA, &[env("hostname", "")]).is_err());
    }

    #[test]
    fn a_url_overrides_the_keys_it_carries() {
        let given = [
            env("port", "1"),
            Given::new("url", Raw::Text("test://:pw@example.org:7000".into())),
        ];
        let settings = resolve(&SCHEMA, &given).unwrap();
        assert_eq!(settings.text("hostname").unwrap(), "example.org");
        assert_eq!(settings.port("port").unwrap(), 7000);
        assert_eq!(settings.secret("password").unwrap().unwrap().expose(), "pw");
        assert!(!format!("{settings:?}").contains("pw@"), "{settings:?}");
        let wrong = resolve(
            &SCHEMA,
            &[Given::new("url", Raw::Text("http://u:pw@h/".into()))],
        );
        assert!(!wrong.unwrap_err().message().contains("pw"));
    }
}
