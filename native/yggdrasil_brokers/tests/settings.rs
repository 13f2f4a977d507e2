//! The settings API without a server: which brokers are built in, each
//! broker's keys, settings resolved from what was given (a `url` included),
//! and errors that name the key and never show a secret.
// Built without some broker, its tests and helpers go.
#![cfg_attr(
    not(all(feature = "redis", feature = "postgres", feature = "rabbitmq")),
    allow(dead_code, unused_imports)
)]
use crossbeam_channel::unbounded;
use yggdrasil_brokers::settings::{Value, COMMON_KEYS};
use yggdrasil_brokers::{brokers, keys, settings, Client, Error, Given, Raw};

fn text(key: &str, value: &str) -> Given {
    Given::new(key, Raw::Text(value.to_string()))
}

/// What a configured environment variable looks like to `settings`.
fn env(key: &str, value: &str) -> Given {
    Given {
        key: key.to_string(),
        origin: format!("environment variable YGGDRASIL_{}", key.to_uppercase()),
        value: Raw::Text(value.to_string()),
    }
}

fn open(broker: &str, given: &[Given]) -> Result<(), Error> {
    let (tx, _rx) = unbounded();
    Client::<u64>::open(broker, given, 0, tx).map(drop)
}

fn common_names() -> Vec<&'static str> {
    COMMON_KEYS.iter().map(|key| key.name).collect()
}

#[test]
fn the_compiled_brokers_are_listed() {
    let mut expected = Vec::new();
    if cfg!(feature = "redis") {
        expected.push("redis");
    }
    if cfg!(feature = "postgres") {
        expected.push("postgres");
    }
    if cfg!(feature = "rabbitmq") {
        expected.push("rabbitmq");
    }
    assert_eq!(brokers(), expected);
    for broker in brokers() {
        let keys = keys(broker).expect("a compiled broker has keys");
        assert!(keys.ends_with(&common_names()), "{broker}: {keys:?}");
        // Defaults only: every key present, in the order `keys` lists them.
        let resolved = settings(broker, &[]).expect("the defaults are valid");
        let names: Vec<&str> = resolved.values().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, keys, "{broker}");
    }
}

#[test]
fn an_unknown_broker_is_refused_everywhere_with_its_name() {
    for error in [
        keys("kafka").expect_err("keys"),
        settings("kafka", &[]).expect_err("settings"),
        open("kafka", &[]).expect_err("open"),
    ] {
        assert!(error.message().contains("unknown broker :kafka"), "{error}");
        assert!(
            error.message().contains(":redis"),
            "lists the known: {error}"
        );
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_keys_then_the_common_ones() {
    assert_eq!(
        keys("redis").expect("redis keys"),
        [
            "hostname",
            "port",
            "password",
            "database",
            "username",
            "publish_timeout",
            "backoff_max",
            "idle_timeout",
            "url",
            "tls",
            "tls_cacertfile",
            "tls_certfile",
            "tls_keyfile",
            "tls_verify",
            "tls_server_name",
        ]
    );
    let defaults = settings("redis", &[]).expect("defaults");
    assert_eq!(defaults.text("hostname").unwrap(), "localhost");
    assert_eq!(defaults.port("port").unwrap(), 6379);
    assert_eq!(defaults.int("database").unwrap(), 0);
    assert_eq!(defaults.secret("password").unwrap(), None);
    assert_eq!(
        defaults.millis("publish_timeout").unwrap().as_millis(),
        5000
    );
    assert_eq!(defaults.millis("backoff_max").unwrap().as_millis(), 5000);
    assert_eq!(defaults.millis("idle_timeout").unwrap().as_millis(), 30_000);
    assert!(!defaults.bool("tls").unwrap());
    assert_eq!(defaults.text("tls_verify").unwrap(), "verify_peer");
}

#[cfg(feature = "redis")]
#[test]
fn a_redis_url_sets_what_it_carries_and_hides_its_password() {
    let given = [
        text("hostname", "elsewhere"),
        Given::new("port", Raw::Int(1)),
        text("url", "rediss://:pw@h:7000/3"),
    ];
    let s = settings("redis", &given).expect("a valid url");
    assert_eq!(s.text("hostname").unwrap(), "h");
    assert_eq!(s.port("port").unwrap(), 7000);
    assert_eq!(s.int("database").unwrap(), 3);
    assert!(s.bool("tls").unwrap(), "rediss:// is TLS");
    assert_eq!(s.secret("password").unwrap().unwrap().expose(), "pw");
    assert_eq!(s.opt_text("username").unwrap(), None);
    assert!(!format!("{s:?}").contains("pw"), "{s:?}");
    for (name, value) in s.values() {
        if *name == "password" || *name == "url" {
            assert!(matches!(value, Value::Secret(_)), "{name}: {value:?}");
        }
    }

    // Bad urls carrying a password: the error names the url, never the password.
    for bad in [
        "rediss://:pw@h:7000/notanumber",
        "http://user:pw@h/",
        "redis://:pw@",
        // A typo: no "//", so no authority, yet a password in it.
        "redis:/u:pw@h",
    ] {
        let error = settings("redis", &[text("url", bad)]).expect_err(bad);
        assert!(error.message().contains("url"), "{bad}: {error}");
        assert!(!error.message().contains("pw"), "{bad}: {error}");
        let error = open("redis", &[text("url", bad)]).expect_err(bad);
        assert!(!error.message().contains("pw"), "{bad}: {error}");
    }
    // Without a url: a default port, database 0, no TLS.
    let plain = settings("redis", &[text("url", "redis://u:p@10.0.0.1")]).unwrap();
    assert_eq!(plain.port("port").unwrap(), 6379);
    assert_eq!(plain.int("database").unwrap(), 0);
    assert_eq!(plain.text("username").unwrap(), "u");
    assert!(!plain.bool("tls").unwrap());
    // The TLS keys still apply beside a redis:// url: it never turns TLS off.
    let given = [
        Given::new("tls", Raw::Bool(true)),
        text("url", "redis://u:p@10.0.0.1"),
    ];
    let s = settings("redis", &given).unwrap();
    assert!(s.bool("tls").unwrap(), "tls: true with a redis:// url");
}

#[cfg(feature = "redis")]
#[test]
fn bad_values_are_errors_naming_their_key_and_origin() {
    let cases: Vec<(Given, &str)> = vec![
        (Given::new("port", Raw::Int(0)), "port"),
        (Given::new("port", Raw::Int(65_536)), "port"),
        (text("port", "abc"), "port"),
        (Given::new("database", Raw::Int(-1)), "database"),
        (text("hostname", ""), "hostname"),
        (Given::new("hostname", Raw::Int(1)), "hostname"),
        (
            Given::new("publish_timeout", Raw::Int(0)),
            "publish_timeout",
        ),
        (Given::new("backoff_max", Raw::Bool(true)), "backoff_max"),
        (text("idle_timeout", "soon"), "idle_timeout"),
        (Given::new("tls", Raw::Atom("yes".into())), "tls"),
        (
            Given::new("tls_verify", Raw::Atom("bogus".into())),
            "tls_verify",
        ),
        (Given::new("url", Raw::Int(6379)), "url"),
    ];
    for (given, key) in cases {
        let error = settings("redis", std::slice::from_ref(&given)).expect_err(key);
        assert!(error.message().contains(key), "{given:?}: {error}");
        // Opening a client checks the same way, with the same error.
        assert_eq!(open("redis", &[given]), Err(error));
    }
    // Where a value came from is in the error, as the caller named it.
    let error = settings("redis", &[env("port", "70000")]).expect_err("port 70000");
    assert!(
        error
            .message()
            .starts_with("environment variable YGGDRASIL_PORT: "),
        "{error}"
    );
    assert!(error.message().contains("70000"), "{error}");
    // A secret's value is never shown, even when it has the wrong type.
    let error = settings("redis", &[Given::new("password", Raw::Int(1_234_567))])
        .expect_err("a number as a password");
    assert!(error.message().contains("password"), "{error}");
    assert!(!error.message().contains("1234567"), "{error}");
    // Environment variables are text: numbers and booleans are parsed.
    let s = settings("redis", &[env("port", " 6380 "), env("tls", "true")]).unwrap();
    assert_eq!(s.port("port").unwrap(), 6380);
    assert!(s.bool("tls").unwrap());
    // Keys of no schema are ignored (a keyword list may hold other things).
    assert!(settings("redis", &[Given::new("pool_size", Raw::Int(-3))]).is_ok());
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_keys_defaults_and_url() {
    let keys = keys("postgres").expect("postgres keys");
    assert_eq!(
        keys[..6],
        ["hostname", "port", "username", "password", "database", "sslmode"]
    );
    let s = settings("postgres", &[]).unwrap();
    assert_eq!(s.port("port").unwrap(), 5432);
    assert_eq!(s.text("username").unwrap(), "postgres");
    assert_eq!(s.text("database").unwrap(), "postgres");
    let s = settings(
        "postgres",
        &[text(
            "url",
            "postgresql://app:s3cret@db:6543/orders?sslmode=require",
        )],
    )
    .unwrap();
    assert_eq!(s.text("hostname").unwrap(), "db");
    assert_eq!(s.port("port").unwrap(), 6543);
    assert_eq!(s.text("username").unwrap(), "app");
    assert_eq!(s.secret("password").unwrap().unwrap().expose(), "s3cret");
    assert_eq!(s.text("database").unwrap(), "orders");
    assert_eq!(s.text("sslmode").unwrap(), "require");
    for (given, key) in [
        (text("sslmode", "sometimes"), "sslmode"),
        (
            text("url", "postgres://app:s3cret@db/x?sslmode=sometimes"),
            "url",
        ),
        (text("url", "redis://app:s3cret@db"), "url"),
    ] {
        let error = settings("postgres", &[given]).expect_err(key);
        assert!(error.message().contains(key), "{error}");
        assert!(!error.message().contains("s3cret"), "{error}");
    }
}

#[cfg(feature = "rabbitmq")]
#[test]
fn rabbitmq_keys_defaults_and_url() {
    let keys = keys("rabbitmq").expect("rabbitmq keys");
    assert_eq!(
        keys[..6],
        [
            "hostname",
            "port",
            "username",
            "password",
            "virtual_host",
            "heartbeat"
        ]
    );
    let s = settings("rabbitmq", &[]).unwrap();
    assert_eq!(s.port("port").unwrap(), 5672);
    assert_eq!(s.text("username").unwrap(), "guest");
    assert_eq!(s.text("virtual_host").unwrap(), "/");
    assert_eq!(s.int("heartbeat").unwrap(), 10);
    let s = settings(
        "rabbitmq",
        &[text("url", "amqps://u:s3cret@mq/%2f?heartbeat=3")],
    )
    .unwrap();
    assert_eq!(s.text("hostname").unwrap(), "mq");
    assert_eq!(s.port("port").unwrap(), 5671, "amqps' port");
    assert!(s.bool("tls").unwrap());
    assert_eq!(s.text("username").unwrap(), "u");
    assert_eq!(s.secret("password").unwrap().unwrap().expose(), "s3cret");
    assert_eq!(s.text("virtual_host").unwrap(), "/");
    assert_eq!(s.int("heartbeat").unwrap(), 3);
    let s = settings("rabbitmq", &[text("url", "amqp://mq:5673/ygg-vh")]).unwrap();
    assert_eq!(s.port("port").unwrap(), 5673);
    assert!(!s.bool("tls").unwrap());
    assert_eq!(s.text("virtual_host").unwrap(), "ygg-vh");
    let given = [
        Given::new("tls", Raw::Bool(true)),
        text("url", "amqp://mq:5673/ygg-vh"),
    ];
    let s = settings("rabbitmq", &given).unwrap();
    assert!(s.bool("tls").unwrap(), "tls: true with an amqp:// url");
    for (given, key) in [
        (Given::new("heartbeat", Raw::Int(70_000)), "heartbeat"),
        (
            text("url", "amqp://u:s3cret@mq/?heartbeat=never"),
            "heartbeat",
        ),
        (text("url", "amqp://u:s3cret@mq/?frame_max=1"), "frame_max"),
    ] {
        let error = settings("rabbitmq", &[given]).expect_err(key);
        assert!(error.message().contains(key), "{error}");
        assert!(!error.message().contains("s3cret"), "{error}");
    }
}
