//! Broker URLs, parsed in one place (placeholder until the TLS branch lands).
use crate::{Error, Secret};

/// A URL's parts, percent-decoded; what they mean is each broker's business.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerUrl {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Percent-decoded, without its leading '/'; `None` when empty.
    pub path: Option<String>,
    pub query: Vec<(String, String)>,
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `text` with any userinfo replaced, for error messages.
pub fn redact(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}***{}", &text[..start + 3], &text[at..])
        }
        _ => text.to_owned(),
    }
}

pub fn parse(text: &str, schemes: &[&str]) -> Result<BrokerUrl, Error> {
    let expected = || {
        let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        Error::new(format!(
            "url: expected {}, got {:?}",
            list.join(" or "),
            redact(text)
        ))
    };
    let url = ::url::Url::parse(text).map_err(|_| expected())?;
    if !schemes.contains(&url.scheme()) {
        return Err(expected());
    }
    let host = match url.host() {
        Some(::url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err(expected()),
    };
    if host.is_empty() {
        return Err(expected());
    }
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    Ok(BrokerUrl {
        scheme: url.scheme().to_owned(),
        host,
        port: url.port(),
        username: Some(decode(url.username())).filter(|u| !u.is_empty()),
        password: url.password().map(|p| Secret::new(decode(p))),
        path: Some(decode(path)).filter(|p| !p.is_empty()),
        query: url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    })
}
