//! Broker URLs (`redis://`, `rediss://`, `postgres://`, `postgresql://`,
//! `amqp://`, `amqps://`), parsed in one place with the `url` crate.
//!
//! The result is generic: host, port, userinfo, path and query, each
//! percent-decoded; what they mean (a database number, a vhost, `sslmode`)
//! is each broker module's business. Errors name the key (`url`), say which
//! schemes are accepted, and echo the URL only through [`redact`], so no
//! password or other userinfo reaches an error, a log line or `inspect/1`.
//!
//! Decoding, as each scheme's own client reads it:
//! - userinfo, host and path: `%XX` decoded, `+` kept (RFC 3986). A path
//!   loses its one leading `/`: `amqp://h/%2F` is the vhost `/`, `amqp://h/`
//!   and `amqp://h` give no path at all.
//! - query: `%XX` decoded, `+` kept, as libpq reads it (`sslrootcert=/a+b.pem`
//!   keeps its `+`); the same for every scheme, so that this module knows no
//!   broker (the parameters other brokers take are numbers).
use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::{Error, Secret};

/// A broker URL taken apart. No field is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    /// Lower case, without `://`: "redis", "rediss", "postgresql", "amqps"...
    pub scheme: String,
    /// Never empty; an IPv6 address without its brackets ("::1").
    pub host: String,
    /// Only when the URL has one.
    pub port: Option<u16>,
    /// `None` when absent or empty (`redis://:pw@h` has only a password).
    pub username: Option<String>,
    /// `None` when absent; `Some("")` for `u:@h`.
    pub password: Option<Secret>,
    /// Decoded, without its leading `/`; `None` when empty.
    pub path: Option<String>,
    /// In order, keys and values decoded; repeated keys are kept.
    pub query: Vec<(String, String)>,
}

/// Parses `text` as a URL with one of `schemes` (lower case, without `://`).
pub(crate) fn parse(text: &str, schemes: &[&str]) -> Result<BrokerUrl, Error> {
    let expected = expected(schemes);
    let fail = |what: &str| {
        Error::new(format!(
            "url: {what} in {:?} (expected {expected})",
            redact(text)
        ))
    };
    let parsed = url::Url::parse(text.trim()).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            Error::new(format!("url: expected {expected}, got {:?}", redact(text)))
        }
        // The crate's messages never quote the input ("invalid port number").
        other => fail(&other.to_string()),
    })?;
    let scheme = parsed.scheme().to_string();
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(&scheme)) {
        return Err(Error::new(format!(
            "url: expected {expected}, got {:?}",
            redact(text)
        )));
    }
    if parsed.fragment().is_some() {
        return Err(fail("a fragment (#...) is not allowed"));
    }
    let host = match parsed.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(url::Host::Ipv4(address)) => address.to_string(),
        // Non-special schemes keep the host as written (percent-encoded).
        Some(url::Host::Domain(domain)) => decode(domain).map_err(|()| fail("bad host"))?,
        None => String::new(),
    };
    if host.is_empty() {
        return Err(fail("no host"));
    }
    let username = Some(parsed.username())
        .filter(|u| !u.is_empty())
        .map(decode)
        .transpose()
        .map_err(|()| fail("the username is not valid UTF-8"))?;
    let password = parsed
        .password()
        .map(decode)
        .transpose()
        .map_err(|()| fail("the password is not valid UTF-8"))?
        .map(Secret::new);
    let raw_path = parsed.path();
    let path = decode(raw_path.strip_prefix('/').unwrap_or(raw_path))
        .map_err(|()| fail("the path is not valid UTF-8"))?;
    let path = Some(path).filter(|p| !p.is_empty());
    let query = match parsed.query() {
        None => Vec::new(),
        Some(query) => query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((decode(key)?, decode(value)?))
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| fail("a query parameter is not valid UTF-8"))?,
    };
    Ok(BrokerUrl {
        scheme,
        host,
        port: parsed.port(),
        username,
        password,
        path,
        query,
    })
}

/// The URL with its userinfo (everything between `://` and the last `@`)
/// replaced by `***`, and the value of any `password` query parameter too:
/// what an error or a log line may show. Errs on the side of hiding: an
/// `@` later in the text (a query value) hides more than the userinfo.
pub(crate) fn redact(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let mut out = match text[start..].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    };
    // libpq also takes `?password=...`.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    Cow::Owned(format!("{key}=***"))
                }
                _ => Cow::Borrowed(pair),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

fn expected(schemes: &[&str]) -> String {
    let listed: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    match listed.as_slice() {
        [] => "no URL".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `%XX` decoding to UTF-8; `+` stays `+`.
fn decode(text: &str) -> Result<String, ()> {
    percent_decode_str(text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: &[&str] = &["redis", "rediss"];
    const POSTGRES: &[&str] = &["postgres", "postgresql"];
    const AMQP: &[&str] = &["amqp", "amqps"];

    fn ok(text: &str, schemes: &[&str]) -> BrokerUrl {
        match parse(text, schemes) {
            Ok(url) => url,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn err(text: &str, schemes: &[&str]) -> String {
        match parse(text, schemes) {
            Ok(url) => panic!("{text} parsed: {url:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn redis_password_port_database() {
        let url = ok("redis://:pw@h:6380/2", REDIS);
        assert_eq!(url.scheme, "redis");
        assert_eq!(url.host, "h");
        assert_eq!(url.port, Some(6380));
        assert_eq!(url.username, None);
        assert_eq!(url.password, Some(Secret::new("pw")));
        assert_eq!(url.path.as_deref(), Some("2"));
        assert!(url.query.is_empty());
    }

    #[test]
    fn userinfo_is_percent_decoded() {
        let url = ok("redis://user:p%40ss@h/", REDIS);
        assert_eq!(url.username.as_deref(), Some("user"));
        assert_eq!(url.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(url.path, None);
        assert_eq!(url.port, None);
        let url = ok("amqp://us%3Aer:a+b%2Fc@h", AMQP);
        assert_eq!(url.username.as_deref(), Some("us:er"));
        assert_eq!(url.password.as_ref().map(Secret::expose), Some("a+b/c"));
    }

    #[test]
    fn rediss_bare_host() {
        let url = ok("rediss://h", REDIS);
        assert_eq!((url.scheme.as_str(), url.host.as_str()), ("rediss", "h"));
        assert_eq!(
            (url.port, url.username, url.password, url.path),
            (None, None, None, None)
        );
    }

    #[test]
    fn postgres_query_is_decoded_libpq_style() {
        let url = ok(
            "postgres://u:p@h:5433/db?sslmode=verify-full&sslrootcert=/x",
            POSTGRES,
        );
        assert_eq!(url.scheme, "postgres");
        assert_eq!(url.username.as_deref(), Some("u"));
        assert_eq!(url.password.as_ref().map(Secret::expose), Some("p"));
        assert_eq!(url.port, Some(5433));
        assert_eq!(url.path.as_deref(), Some("db"));
        assert_eq!(
            url.query,
            vec![
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/x".to_string()),
            ]
        );
        let url = ok("postgresql://h/db?sslrootcert=/a+b%20c.pem", POSTGRES);
        assert_eq!(url.scheme, "postgresql");
        assert_eq!(url.path.as_deref(), Some("db"));
        assert_eq!(url.query, vec![("sslrootcert".into(), "/a+b c.pem".into())]);
        // Every scheme alike.
        let url = ok("amqp://h?heartbeat=5&x=a+b%20c", AMQP);
        assert_eq!(
            url.query,
            vec![
                ("heartbeat".into(), "5".into()),
                ("x".into(), "a+b c".into())
            ]
        );
    }

    #[test]
    fn ipv6_host_loses_its_brackets() {
        let url = ok("redis://[::1]:7000/1", REDIS);
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, Some(7000));
        let url = ok("postgres://u@[fe80::1]/db", POSTGRES);
        assert_eq!(url.host, "fe80::1");
        assert_eq!(ok("amqp://127.0.0.1", AMQP).host, "127.0.0.1");
    }

    #[test]
    fn amqp_vhosts() {
        let url = ok("amqp://u:p@h/%2F", AMQP);
        assert_eq!(url.path.as_deref(), Some("/"));
        assert_eq!(ok("amqp://h/", AMQP).path, None);
        assert_eq!(ok("amqp://h", AMQP).path, None);
        assert_eq!(ok("amqp://h/vh%2Fx", AMQP).path.as_deref(), Some("vh/x"));
        let url = ok("amqps://h", AMQP);
        assert_eq!((url.scheme.as_str(), url.port), ("amqps", None));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(ok("REDIS://h", REDIS).scheme, "redis");
    }

    #[test]
    fn bad_urls_name_the_key_and_the_schemes() {
        let e = err("http://user:hunter2@host/", REDIS);
        assert_eq!(
            e,
            "url: expected redis:// or rediss://, got \"http://***@host/\""
        );
        let e = err("redis://:hunter2@/2", REDIS);
        assert!(e.starts_with("url: "), "{e}");
        assert!(e.contains("redis:// or rediss://"), "{e}");
        let e = err("redis:///2", REDIS);
        assert!(e.contains("no host"), "{e}");
        let e = err("redis://h:99999/", REDIS);
        assert!(e.contains("invalid port number"), "{e}");
        let e = err("redis://h:port/", REDIS);
        assert!(e.contains("invalid port number"), "{e}");
        let e = err("garbage", POSTGRES);
        assert_eq!(
            e,
            "url: expected postgres:// or postgresql://, got \"garbage\""
        );
        let e = err("", AMQP);
        assert!(e.starts_with("url: expected amqp:// or amqps://"), "{e}");
        let e = err("amqp://h/%FF", AMQP);
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = err("amqp://h/#frag", AMQP);
        assert!(e.contains("fragment"), "{e}");
        let e = err("amqp://[::1/", AMQP);
        assert!(e.starts_with("url: "), "{e}");
    }

    #[test]
    fn the_password_never_appears_in_an_error() {
        let bad = [
            ("http://u:s3cr%40t@host/", REDIS),
            ("redis://u:s3cr%40t@:99999/", REDIS),
            ("redis://u:s3cr%40t@/", REDIS),
            ("redis://u:s3cr%40t@h:x/", REDIS),
            ("redis://u:s3cr%40t@h/#x", REDIS),
            ("postgres://u:s3cr%40t@h/%FF", POSTGRES),
            ("postgres://u:s3cr%40t@[::1/db", POSTGRES),
            ("postgres://h/db?password=s3cr%40t&x=%FF", POSTGRES),
            ("amqp://u:s3cr%40t@h:-1/", AMQP),
            ("u:s3cr%40t@h", AMQP),
            ("amqp://u:s3cr/t@h/", AMQP),
            ("amqp://u:s3cr#t@h/", AMQP),
            ("amqp://u:s3cr@t@h:0x/", AMQP),
        ];
        for (text, schemes) in bad {
            let e = err(text, schemes);
            for secret in ["s3cr", "%40t", "@t@"] {
                assert!(!e.contains(secret), "{text} -> {e}");
            }
        }
    }

    #[test]
    fn redact_hides_userinfo_and_password_params() {
        assert_eq!(redact("redis://:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redact("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(redact("a:b@c"), "***@c");
        assert_eq!(
            redact("postgres://h/db?sslmode=require&password=x&PASSWORD=y"),
            "postgres://h/db?sslmode=require&password=***&PASSWORD=***"
        );
    }

    #[test]
    fn secret_debug_does_not_show_the_password() {
        let url = ok("redis://u:hunter2@h", REDIS);
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
