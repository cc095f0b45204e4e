//! Data-driven configuration tests: each case is a config text and the exact errors it must give.

use std::collections::HashMap;

use super::*;

const SERVER: &str = r#"
[[servers]]
name = "ex1"
ews_url = "https://mail.example.com/EWS/Exchange.asmx"
auth = "basic"
[servers.service_account]
username = "svc"
password = { env = "PW" }
"#;

fn env() -> HashMap<&'static str, &'static str> {
    [("PW", "secret"), ("TOKEN", "0123456789abcdef0123")].into()
}

fn mailbox(smtp: &str, operator: &str) -> String {
    format!("[[mailboxes]]\nsmtp = \"{smtp}\"\noperator = \"{operator}\"\nserver = \"ex1\"\n")
}

fn valid() -> String {
    format!("{SERVER}{}", mailbox("a@example.com", "1"))
}

/// Parses `text` and compares the rendered errors with `expected` (all of them, in order).
#[track_caller]
fn check(text: &str, expected: &[&str]) {
    let got: Vec<String> = match parse(text, &env()) {
        Ok(_) => vec![],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(got, expected, "config:\n{text}");
}

#[test]
fn minimal_config_is_valid() {
    check(&valid(), &[]);
    let cfg = parse(&valid(), &env()).unwrap();
    assert_eq!(cfg.mailboxes[0].areas.len(), 4, "all areas by default");
    assert_eq!(cfg.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(cfg.state.kind, DbKind::Sqlite);
    assert!(cfg.servers[0].impersonation());
    assert_eq!(cfg.servers[0].streaming.group_size, 200);
}

#[test]
fn broken_configs_report_their_errors() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "mailbox names an unknown server",
            format!("{SERVER}[[mailboxes]]\nsmtp = \"a@example.com\"\noperator = \"1\"\nserver = \"nope\"\n"),
            vec![r#"mailboxes[0].server: unknown server "nope" (configured: ex1)"#],
        ),
        (
            "duplicate smtp address, case-insensitive",
            format!("{}{}", valid(), mailbox("A@Example.com", "2")),
            vec![r#"mailboxes[1].smtp: "a@example.com" is already used by mailboxes[0]"#],
        ),
        (
            "two mailboxes for one operator",
            format!("{}{}", valid(), mailbox("b@example.com", "1")),
            vec![r#"mailboxes[1].operator: operator "1" already has a mailbox (mailboxes[0]); one operator has exactly one mailbox"#],
        ),
        (
            "retention out of range",
            format!("{}[retention]\ndays = 0\ninterval_minutes = 2000\n", valid()),
            vec![
                "retention.days: 0 is out of range, allowed 1 to 3650",
                "retention.interval_minutes: 2000 is out of range, allowed 1 to 1440",
            ],
        ),
        (
            "unknown retention key",
            format!("{}[retention]\nweeks = 3\n", valid()),
            vec!["retention.weeks: line 14, column 1: unknown field `weeks`, expected `days` or `interval_minutes`"],
        ),
        (
            "invalid address",
            format!("{SERVER}{}", mailbox("bob@", "1")),
            vec![r#"mailboxes[0].smtp: "bob@" is not an e-mail address"#],
        ),
        (
            "group size of 500",
            format!("{}[servers.streaming]\ngroup_size = 500\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].streaming.group_size: 500 is out of range, allowed 1 to 200"],
        ),
        (
            "connection timeout of 0",
            format!("{}[servers.streaming]\nconnection_timeout_minutes = 0\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].streaming.connection_timeout_minutes: 0 is out of range, allowed 1 to 30"],
        ),
        (
            "a request rate of zero",
            format!("{}[servers.throttle]\nrequests_per_second = 0\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].throttle.requests_per_second: 0 is out of range, allowed more than 0 up to 10000 (fractions are kept: 0.5 is one request every 2 s)"],
        ),
        (
            "a negative request rate",
            format!("{}[servers.throttle]\nrequests_per_second = -0.5\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].throttle.requests_per_second: -0.5 is out of range, allowed more than 0 up to 10000 (fractions are kept: 0.5 is one request every 2 s)"],
        ),
        (
            "a request rate that is not a number",
            format!("{}[servers.throttle]\nrequests_per_second = nan\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].throttle.requests_per_second: NaN is not a finite number of requests per second"],
        ),
        (
            "an infinite request rate",
            format!("{}[servers.throttle]\nrequests_per_second = inf\n{}", SERVER, mailbox("a@example.com", "1")),
            vec!["servers[0].throttle.requests_per_second: inf is not a finite number of requests per second"],
        ),
        (
            "a category filter for mail, which nothing applies",
            format!("{}[mailbox_defaults]\nfilters = {{ mail = [\"Kunde\"] }}\n{}filters = {{ contacts = [\"Kunde\"], mail = [] }}\n", SERVER, mailbox("a@example.com", "1")),
            vec![
                "mailbox_defaults.filters.mail: mail is not filtered by category (every message of the synced folders syncs); remove it, and limit mail with mail.excluded_folders or mail.sync_from",
                "mailboxes[0].filters.mail: mail is not filtered by category (every message of the synced folders syncs); remove it, and limit mail with mail.excluded_folders or mail.sync_from",
            ],
        ),
        (
            "unknown key",
            format!("{}colour = \"blue\"\n", valid()),
            vec!["mailboxes[0].colour: line 13, column 1: unknown field `colour`, expected one of `smtp`, `operator`, `server`, `tenant`, `credentials`, `areas`, `leading`, `filters`, `initial_sync`, `mail`, `delete_limit`, `delete_limit_percent`, `sync_ambiguous`"],
        ),
        (
            "malformed toml, with its line",
            "[[servers]]\nname = \"ex1\"\nauth = basic\n".to_string(),
            vec!["line 3, column 8: invalid string\nexpected `\"`, `'`"],
        ),
        (
            "secret file that does not exist",
            SERVER.replace(r#"{ env = "PW" }"#, r#"{ file = "/nonexistent/mailsync/pw" }"#) + &mailbox("a@example.com", "1"),
            vec!["servers[0].service_account.password: secret file /nonexistent/mailsync/pw cannot be read: No such file or directory (os error 2)"],
        ),
        (
            "secret env var not set",
            SERVER.replace(r#"{ env = "PW" }"#, r#"{ env = "UNSET_PW" }"#) + &mailbox("a@example.com", "1"),
            vec!["servers[0].service_account.password: environment variable UNSET_PW is not set"],
        ),
        (
            "secret with an unknown form",
            SERVER.replace(r#"{ env = "PW" }"#, r#"{ vault = "PW" }"#) + &mailbox("a@example.com", "1"),
            vec!["servers[0].service_account.password: line 8, column 12: unknown field `vault`, expected `env` or `file`"],
        ),
        (
            "no servers at all",
            mailbox("a@example.com", "1"),
            vec![
                "servers: no Exchange server configured; add a [[servers]] table",
                r#"mailboxes[0].server: unknown server "ex1" (configured: none)"#,
            ],
        ),
        (
            "plain http without allow_http",
            SERVER.replace("https://", "http://") + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].ews_url: "http://mail.example.com/EWS/Exchange.asmx" is plain http; credentials would travel unencrypted (set allow_http = true for a test set-up)"#],
        ),
        (
            "both ews_url and autodiscover",
            SERVER.replace("auth = \"basic\"", "auth = \"basic\"\nautodiscover = true") + &mailbox("a@example.com", "1"),
            vec!["servers[0]: set either ews_url or autodiscover = true, not both"],
        ),
        (
            "unknown auth method",
            SERVER.replace("auth = \"basic\"", "auth = \"kerberos\"") + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].auth: "kerberos" is not an auth method, expected basic, ntlm or oauth2"#],
        ),
        (
            "oauth2 without its table, and a service account that does not apply",
            SERVER.replace("auth = \"basic\"", "auth = \"oauth2\"") + &mailbox("a@example.com", "1"),
            vec![
                r#"servers[0].oauth2: is required when auth = "oauth2""#,
                r#"servers[0].service_account: does not apply with auth = "oauth2": the app-only token acts for every mailbox"#,
            ],
        ),
        (
            "oauth2 with neither secret nor certificate",
            "[[servers]]\nname = \"ex1\"\nautodiscover = true\nauth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\n".to_string() + &mailbox("a@example.com", "1"),
            vec![
                "servers[0].oauth2: no client credential: set client_secret or certificate_file",
            ],
        ),
        (
            "no service account and no mailbox credentials",
            "[[servers]]\nname = \"ex1\"\news_url = \"https://mail.example.com/EWS/Exchange.asmx\"\nauth = \"ntlm\"\n".to_string() + &mailbox("a@example.com", "1"),
            vec![r#"mailboxes[0].credentials: are required: server "ex1" has no service_account"#],
        ),
        (
            "unknown version",
            SERVER.replace("auth = \"basic\"", "auth = \"basic\"\nversion = \"Exchange2007\"") + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].version: "Exchange2007" is not a supported version, expected one of Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2016"#],
        ),
        (
            "unknown area, leading system and initial sync direction",
            format!("{}areas = [\"contacts\", \"notes\"]\nleading = {{ contacts = \"erp\" }}\ninitial_sync = \"both\"\n", valid()),
            vec![
                r#"mailboxes[0].areas[1]: "notes" is not a data area, expected contacts, calendar, tasks or mail"#,
                r#"mailboxes[0].leading.contacts: "erp" is not a leading system, expected crm or exchange"#,
                r#"mailboxes[0].initial_sync: "both" is not a direction, expected crm-to-exchange, exchange-to-crm or none"#,
            ],
        ),
        (
            "unknown tenant, and tenant missing where tenants exist",
            format!("[[tenants]]\nid = \"10\"\nname = \"A\"\n{}tenant = \"99\"\n{}", valid(), mailbox("b@example.com", "2")),
            vec![
                r#"mailboxes[0].tenant: unknown tenant "99""#,
                "mailboxes[1].tenant: is required because [[tenants]] are configured",
            ],
        ),
        (
            "mail settings without the mail area, and a folder both excluded and dated",
            format!("{}areas = [\"contacts\"]\n[mailboxes.mail]\nexcluded_folders = [\"inbox/x\"]\nfolders = [{{ path = \"Inbox/X/\", sync_from = 2024-01-01 }}]\n", valid()),
            vec![
                r#"mailboxes[0].mail.folders[0].path: "Inbox/X/" is also in excluded_folders"#,
                "mailboxes[0].mail: is set but the mail area is not enabled",
            ],
        ),
        (
            "a date-time where a date belongs",
            format!("{}[mailboxes.mail]\nsync_from = 2024-01-01T10:00:00Z\n", valid()),
            vec!["mailboxes[0].mail.sync_from: 2024-01-01T10:00:00Z is not a plain date such as 2025-01-31"],
        ),
        (
            "bad database URL and admin address, and a short token",
            format!("[database]\nurl = \"oracle://db/x\"\n[admin]\nlisten = \"localhost\"\ntoken = \"short\"\n{}", valid()),
            vec![
                r#"admin.listen: "localhost" is not a socket address such as 127.0.0.1:9898"#,
                "admin.token: is shorter than 16 characters; use a long random token",
                r#"database.url: "oracle://db/x" is not a supported database URL, expected sqlite:, postgres://, mysql:// or mariadb://"#,
            ],
        ),
        (
            "admin on a public address without a token",
            format!("[admin]\nlisten = \"0.0.0.0:9898\"\n{}", valid()),
            vec!["admin.token: is required when admin.listen (0.0.0.0:9898) is not a loopback address"],
        ),
        (
            "a mysql state store",
            format!("[state]\nurl = \"mysql://root@localhost/x\"\n{}", valid()),
            vec![r#"state.url: "mysql://root@localhost/x": the state store cannot be MariaDB/MySQL; use sqlite:PATH (the default) or postgres:// (MariaDB/MySQL is supported for the business database, [database])"#],
        ),
        (
            "a mariadb state store, password masked",
            format!("[state]\nurl = \"mariadb://u:pw@db/x\"\n{}", valid()),
            vec![r#"state.url: "mariadb://u:***@db/x": the state store cannot be MariaDB/MySQL; use sqlite:PATH (the default) or postgres:// (MariaDB/MySQL is supported for the business database, [database])"#],
        ),
        (
            "several problems at once are all reported",
            format!("{SERVER}{}{}", mailbox("x", "1"), mailbox("y@example.com", "1")),
            vec![
                r#"mailboxes[0].smtp: "x" is not an e-mail address"#,
                r#"mailboxes[1].operator: operator "1" already has a mailbox (mailboxes[0]); one operator has exactly one mailbox"#,
            ],
        ),
    ];
    let mut mismatches = Vec::new();
    for (name, text, expected) in &cases {
        let got: Vec<String> = match parse(text, &env()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        if got != *expected {
            mismatches.push(format!(
                "case {name:?}\n  expected: {expected:#?}\n  got:      {got:#?}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn retention_defaults_to_ninety_days_hourly() {
    let cfg = parse(&valid(), &env()).unwrap();
    assert_eq!(cfg.retention, RetentionConfig::default());
    assert_eq!(cfg.retention.keep, Duration::from_secs(90 * 86_400));
    assert_eq!(cfg.retention.interval, Duration::from_secs(3600));
    let cfg = parse(
        &format!("{}[retention]\ndays = 7\ninterval_minutes = 5\n", valid()),
        &env(),
    )
    .unwrap();
    assert_eq!(cfg.retention.keep, Duration::from_secs(7 * 86_400));
    assert_eq!(cfg.retention.interval, Duration::from_secs(300));
}

#[test]
fn defaults_merge_key_by_key() {
    let text = format!(
        "[mailbox_defaults]\nareas = [\"contacts\", \"calendar\"]\nleading = {{ contacts = \"exchange\", calendar = \"exchange\" }}\nfilters = {{ contacts = [\"Kunde\"] }}\n{}leading = {{ calendar = \"crm\" }}\n",
        valid()
    );
    let cfg = parse(&text, &env()).unwrap();
    let mb = &cfg.mailboxes[0];
    assert_eq!(
        mb.areas.keys().copied().collect::<Vec<_>>(),
        vec![Area::Contacts, Area::Calendar]
    );
    assert_eq!(mb.areas[&Area::Contacts].leading, Leading::Exchange);
    assert_eq!(mb.areas[&Area::Calendar].leading, Leading::Crm);
    assert_eq!(
        mb.areas[&Area::Contacts].categories,
        vec!["Kunde".to_string()]
    );
}

#[test]
fn environment_overrides_apply() {
    let mut e = env();
    e.insert(overrides::DATABASE_URL, "postgres://u:pw@db/crm");
    e.insert(overrides::ADMIN_LISTEN, "127.0.0.1:9999");
    e.insert(overrides::LOG_FORMAT, "json");
    e.insert(overrides::ADMIN_TOKEN, "from-the-environment-0001");
    let cfg = parse(
        &format!("[database]\nurl = \"sqlite:x.db\"\n{}", valid()),
        &e,
    )
    .unwrap();
    let db = cfg.database.unwrap();
    assert_eq!(db.kind, DbKind::Postgres);
    assert_eq!(db.url.expose(), "postgres://u:pw@db/crm");
    assert_eq!(cfg.admin.listen.port(), 9999);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(
        cfg.admin.token.unwrap().expose(),
        "from-the-environment-0001"
    );

    e.insert(overrides::LOG_FORMAT, "xml");
    check_env(
        &valid(),
        &e,
        &[r#"MAILSYNC_LOG_FORMAT: "xml" is not a log format, expected text or json"#],
    );
}

#[track_caller]
fn check_env(text: &str, e: &HashMap<&str, &str>, expected: &[&str]) {
    let got: Vec<String> = parse(text, e)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn debug_output_never_shows_secrets() {
    let mut e = env();
    e.insert("PW", "very-secret-password");
    e.insert(overrides::DATABASE_URL, "postgres://u:db-password@db/crm");
    let cfg = parse(&valid(), &e).unwrap();
    let dump = format!("{cfg:?}");
    assert!(!dump.contains("very-secret-password"), "{dump}");
    assert!(!dump.contains("db-password"), "{dump}");
}

#[test]
fn example_file_is_valid() {
    let e: HashMap<&str, &str> = [
        ("MAILSYNC_ADMIN_TOKEN", "example-token-0123456789"),
        (
            "MAILSYNC_CRM_DATABASE_URL",
            "postgres://mailsync@localhost/crm",
        ),
        ("MAILSYNC_ONPREM_PASSWORD", "x"),
        ("MAILSYNC_ONLINE_CLIENT_SECRET", "y"),
        ("MAILSYNC_SMTP_PASSWORD", "z"),
    ]
    .into();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailsync.example.toml");
    let cfg = load(&path, &e).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.servers.len(), 2);
    assert_eq!(cfg.mailboxes.len(), 3);
    assert_eq!(cfg.tenants.len(), 2);
    let bernd = cfg.mailbox("Bernd.Meyer@example.com").unwrap();
    assert_eq!(bernd.initial_sync, InitialSync::ExchangeToCrm);
    assert_eq!(bernd.mail.sync_from, NaiveDate::from_ymd_opt(2024, 6, 1));
    assert_eq!(
        bernd.mail.excluded_folders,
        vec!["junkemail", "inbox/Newsletter"],
        "inherited from the defaults"
    );
    assert_eq!(bernd.areas[&Area::Calendar].leading, Leading::Crm);
    assert!(matches!(cfg.servers[1].auth, AuthConfig::OAuth2(_)));
    assert!(cfg.servers[1].impersonation());
}

#[test]
fn smtp_server_defaults_and_errors() {
    let cfg = parse(
        &format!("{}[smtp]\nhost = \"smtp.example.com\"\n", valid()),
        &env(),
    )
    .unwrap();
    let smtp = cfg.smtp.expect("an SMTP server");
    assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::StartTls));
    assert!(smtp.credentials.is_none());
    let cfg = parse(
        &format!(
            "{}[smtp]\nhost = \"smtp.example.com\"\ntls = \"tls\"\nusername = \"relay\"\npassword = {{ env = \"PW\" }}\n",
            valid()
        ),
        &env(),
    )
    .unwrap();
    let smtp = cfg.smtp.expect("an SMTP server");
    assert_eq!((smtp.port, smtp.tls), (465, SmtpTls::Tls));
    assert_eq!(
        smtp.credentials.as_ref().map(|c| c.1.expose()),
        Some("secret")
    );
    check(
        &format!(
            "{}[smtp]\nhost = \"smtp example\"\ntls = \"ssl\"\nusername = \"u\"\n",
            valid()
        ),
        &[
            r#"smtp.host: "smtp example" is not a host name"#,
            r#"smtp.tls: "ssl" is not a TLS mode, expected starttls, tls or none"#,
            "smtp.password: is missing: username and password go together",
        ],
    );
    check(
        &format!(
            "{}[smtp]\nhost = \"relay\"\ntls = \"none\"\nusername = \"u\"\npassword = \"p\"\n",
            valid()
        ),
        &[r#"smtp.tls: is "none" but credentials are set: they would travel unencrypted"#],
    );
}

fn fixture(name: &str) -> String {
    mailsync_testkit::fixtures::path(name).display().to_string()
}

/// An OAuth2 server with a certificate credential from the test fixtures.
fn oauth2_certificate(cert: &str, key: &str) -> String {
    format!(
        "[[servers]]\nname = \"ex1\"\nautodiscover = true\nauth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\n{}",
        fixture(cert),
        fixture(key),
        mailbox("a@example.com", "1")
    )
}

#[test]
fn access_modes_autodiscover_settings_and_caps() {
    use mailsync_testkit::fixtures as f;
    // Delegate access with a service account: no impersonation, every mailbox by delegate.
    let delegate = SERVER.replace(
        "auth = \"basic\"",
        "auth = \"basic\"\naccess = \"delegate\"",
    ) + &mailbox("a@example.com", "1");
    let cfg = parse(&delegate, &env()).unwrap();
    assert_eq!(cfg.servers[0].access, AccessMode::Delegate);
    assert!(!cfg.servers[0].impersonation());
    assert_eq!(
        cfg.servers[0].access_for(&cfg.mailboxes[0]),
        ews::Access::Delegate
    );
    let impersonation = parse(&valid(), &env()).unwrap();
    assert_eq!(
        impersonation.servers[0].access_for(&impersonation.mailboxes[0]),
        ews::Access::Impersonation
    );
    assert_eq!(impersonation.servers[0].max_response_bytes, 16 * MIB);
    assert_eq!(impersonation.servers[0].max_mime_response_bytes, 128 * MIB);
    assert_eq!(impersonation.mailboxes[0].mail.max_message_bytes, 64 * MIB);

    // Autodiscover set by hand, with allowed hosts.
    let ad = format!(
        "[[servers]]\nname = \"ex1\"\nautodiscover = true\nautodiscover_url = \"https://ad.example.net:8443/autodiscover/autodiscover.svc\"\nautodiscover_allowed_hosts = [\"autodiscover-s.outlook.com\", \"*.example.net\"]\nauth = \"ntlm\"\nmax_response_mb = 8\nmax_mime_response_mb = 256\n[servers.service_account]\nusername = 'EXAMPLE\\svc'\npassword = {{ env = \"PW\" }}\n{}mail = {{ max_message_mb = 150 }}\n",
        mailbox("a@example.com", "1")
    );
    let cfg = parse(&ad, &env()).unwrap();
    let Endpoint::Autodiscover {
        url, allowed_hosts, ..
    } = &cfg.servers[0].endpoint
    else {
        panic!("autodiscover")
    };
    assert_eq!(
        url.as_ref().map(url::Url::as_str),
        Some("https://ad.example.net:8443/autodiscover/autodiscover.svc")
    );
    assert_eq!(
        allowed_hosts,
        &vec![
            "autodiscover-s.outlook.com".to_string(),
            "*.example.net".into()
        ]
    );
    assert_eq!(cfg.servers[0].max_response_bytes, 8 * MIB);
    assert_eq!(cfg.mailboxes[0].mail.max_message_bytes, 150 * MIB);

    // A certificate credential is loaded and checked when the configuration is.
    let cfg = parse(
        &oauth2_certificate(f::OAUTH_APP_CERT, f::OAUTH_APP_KEY),
        &env(),
    )
    .unwrap();
    let AuthConfig::OAuth2(o) = &cfg.servers[0].auth else {
        panic!("oauth2")
    };
    let OAuth2Credential::Certificate { credential, .. } = &o.credential else {
        panic!("certificate")
    };
    assert_eq!(credential.thumbprint(), f::OAUTH_APP_X5T);
    check(
        &oauth2_certificate(f::OAUTH_APP_CERT, f::OAUTH_APP_KEY_PKCS1),
        &[],
    );
}

#[test]
fn access_autodiscover_certificate_and_cap_errors() {
    use mailsync_testkit::fixtures as f;
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "an unknown access mode",
            SERVER.replace("auth = \"basic\"", "auth = \"basic\"\naccess = \"sudo\"")
                + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].access: "sudo" is not an access mode, expected impersonation or delegate"#.into()],
        ),
        (
            "delegate without a service account",
            "[[servers]]\nname = \"ex1\"\news_url = \"https://mail.example.com/EWS/Exchange.asmx\"\nauth = \"ntlm\"\naccess = \"delegate\"\n".to_string()
                + &mailbox("a@example.com", "1")
                + "credentials = { username = \"a\", password = \"p\" }\n",
            vec![r#"servers[0].service_account: is required with access = "delegate": the account that has full access to the mailboxes"#.into()],
        ),
        (
            "delegate with app-only OAuth2",
            "[[servers]]\nname = \"ex1\"\nautodiscover = true\nauth = \"oauth2\"\naccess = \"delegate\"\n[servers.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n".to_string()
                + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].access: "delegate" needs a service account with full access to the mailboxes (auth basic or ntlm); app-only OAuth2 tokens act by impersonation"#.into()],
        ),
        (
            "Autodiscover keys without autodiscover, a bad URL and bad hosts",
            SERVER.replace(
                "auth = \"basic\"",
                "auth = \"basic\"\nautodiscover_url = \"https://ad.example.com/autodiscover/autodiscover.svc\"\nautodiscover_allowed_hosts = [\"x.example.com\"]",
            ) + &mailbox("a@example.com", "1"),
            vec![
                "servers[0].autodiscover_url: only applies with autodiscover = true".into(),
                "servers[0].autodiscover_allowed_hosts: only applies with autodiscover = true".into(),
            ],
        ),
        (
            "a plain-http Autodiscover URL and hosts that are not host names",
            "[[servers]]\nname = \"ex1\"\nautodiscover = true\nautodiscover_url = \"http://ad.example.com/autodiscover/autodiscover.svc\"\nautodiscover_allowed_hosts = [\"https://evil.example\", \"*.\", \"ok.example\"]\nauth = \"basic\"\nservice_account = { username = \"svc\", password = \"p\" }\n".to_string()
                + &mailbox("a@example.com", "1"),
            vec![
                r#"servers[0].autodiscover_url: "http://ad.example.com/autodiscover/autodiscover.svc" is plain http; credentials would travel unencrypted (set allow_http = true for a test set-up)"#.into(),
                r#"servers[0].autodiscover_allowed_hosts[0]: "https://evil.example" is not a host name (or *.domain)"#.into(),
                r#"servers[0].autodiscover_allowed_hosts[1]: "*." is not a host name (or *.domain)"#.into(),
            ],
        ),
        (
            "an http token URL",
            "[[servers]]\nname = \"ex1\"\nautodiscover = true\nauth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"http://login.example/t/token\"\n".to_string()
                + &mailbox("a@example.com", "1"),
            vec![r#"servers[0].oauth2.token_url: "http://login.example/t/token" is plain http; credentials would travel unencrypted (set allow_http = true for a test set-up)"#.into()],
        ),
        (
            "caps out of range, and a mail cap that no answer could hold",
            SERVER.replace(
                "auth = \"basic\"",
                "auth = \"basic\"\nmax_response_mb = 0\nmax_mime_response_mb = 10",
            ) + &mailbox("a@example.com", "1")
                + "mail = { max_message_mb = 9 }\n",
            vec![
                "servers[0].max_response_mb: 0 is out of range, allowed 1 to 1024".into(),
                r#"mailboxes[0].mail.max_message_mb: 9 MiB does not fit in an answer of server "ex1" (max_mime_response_mb = 10, of which MIME in base64 may take 3/4): raise max_mime_response_mb or lower max_message_mb"#.into(),
            ],
        ),
        (
            "credentials in EWS, Autodiscover and token URLs: refused, never shown",
            SERVER.replace(
                "https://mail.example.com/",
                "https://svc:hunter2@mail.example.com/",
            ) + &SERVER.replace("ex1", "ex2").replace(
                "Exchange.asmx",
                "Exchange.asmx?password=hunter2",
            ) + "[[servers]]\nname = \"ex3\"\nautodiscover = true\nautodiscover_url = \"https://ad.example.com/autodiscover/autodiscover.svc?token=hunter2\"\nauth = \"oauth2\"\n[servers.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"https://app:hunter2@login.example/t/token\"\n"
                + &mailbox("a@example.com", "1"),
            vec![
                r#"servers[0].ews_url: "https://svc:***@mail.example.com/EWS/Exchange.asmx" carries credentials; they belong in service_account, credentials or oauth2 (secrets from the environment or a file), where they are sent only as the auth allows"#.into(),
                r#"servers[1].ews_url: "https://mail.example.com/EWS/Exchange.asmx?password=***" carries credentials; they belong in service_account, credentials or oauth2 (secrets from the environment or a file), where they are sent only as the auth allows"#.into(),
                r#"servers[2].autodiscover_url: "https://ad.example.com/autodiscover/autodiscover.svc?token=***" carries credentials; they belong in service_account, credentials or oauth2 (secrets from the environment or a file), where they are sent only as the auth allows"#.into(),
                r#"servers[2].oauth2.token_url: "https://app:***@login.example/t/token" carries credentials; they belong in service_account, credentials or oauth2 (secrets from the environment or a file), where they are sent only as the auth allows"#.into(),
            ],
        ),
        (
            "caps that would overflow when counted in bytes",
            SERVER.replace(
                "auth = \"basic\"",
                "auth = \"basic\"\nmax_response_mb = 9223372036854775807\nmax_mime_response_mb = 9223372036854775807",
            ) + &mailbox("a@example.com", "1")
                + "mail = { max_message_mb = 9223372036854775807 }\n",
            vec![
                "servers[0].max_response_mb: 9223372036854775807 is out of range, allowed 1 to 1024".into(),
                "servers[0].max_mime_response_mb: 9223372036854775807 is out of range, allowed 1 to 4096".into(),
                "mailboxes[0].mail.max_message_mb: 9223372036854775807 is out of range, allowed 1 to 4096".into(),
            ],
        ),
        (
            "the default mail cap does not fit a small MIME cap",
            SERVER.replace("auth = \"basic\"", "auth = \"basic\"\nmax_mime_response_mb = 64")
                + &mailbox("a@example.com", "1"),
            vec![r#"mailbox_defaults.mail.max_message_mb: 64 MiB does not fit in an answer of server "ex1" (max_mime_response_mb = 64, of which MIME in base64 may take 3/4): raise max_mime_response_mb or lower max_message_mb"#.into()],
        ),
        (
            "a key that is not the certificate's",
            oauth2_certificate(f::OAUTH_APP_CERT, f::OTHER_RSA_KEY),
            vec!["servers[0].oauth2.private_key_file: the private key does not belong to the certificate (or the key is shorter than 2048 bits)".into()],
        ),
        (
            "a key that is not RSA",
            oauth2_certificate(f::OAUTH_APP_CERT, f::EC_KEY),
            vec!["servers[0].oauth2.private_key_file: the private key is not an RSA key; certificate credentials are signed with RS256".into()],
        ),
        (
            "a certificate file that holds a key",
            oauth2_certificate(f::OAUTH_APP_KEY, f::OAUTH_APP_KEY),
            vec!["servers[0].oauth2.certificate_file: the certificate file holds no PEM certificate".into()],
        ),
    ];
    for (what, text, expected) in cases {
        let got: Vec<String> = match parse(&text, &env()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(got, expected, "{what}:\n{text}");
    }
}

#[test]
fn an_admin_token_that_cannot_travel_in_a_header_is_refused_without_being_shown() {
    let mut e = env();
    e.insert(
        overrides::ADMIN_TOKEN,
        "secret-token-0123456789\nX-Injected: 1",
    );
    let errors = parse(&valid(), &e).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec!["admin.token: holds characters an HTTP header cannot carry (spaces, control characters or non-ASCII); use letters, digits and punctuation"]
    );
}
