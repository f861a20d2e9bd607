use secrecy::ExposeSecret;

use super::*;

fn load(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
    Settings::load_from(
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn defaults_need_no_configuration() {
    let s = load(&[]).unwrap();
    assert_eq!(s.server.host, "127.0.0.1");
    assert_eq!(s.server.port, 8080);
    assert_eq!(s.database.url.expose_secret(), DEFAULT_DATABASE_URL);
    assert_eq!(s.limits.max_upload_bytes, 512 * 1024 * 1024);
    assert!(!s.webhooks.allow_private_networks);
    assert_eq!(s.webhooks.max_retry_secs, 72 * 3600);
}

#[test]
fn webhook_settings_from_the_environment() {
    let s = load(&[
        ("OPENBATCH__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
        ("OPENBATCH__WEBHOOKS__RETRY_BASE_MS", "20"),
    ])
    .unwrap();
    assert!(s.webhooks.allow_private_networks);
    assert_eq!(s.webhooks.retry_base_ms, 20);
    let err = format!(
        "{:#}",
        load(&[("OPENBATCH__WEBHOOKS__RETRY_BASE_MS", "0")]).unwrap_err()
    );
    assert!(err.contains("OPENBATCH__WEBHOOKS__RETRY_BASE_MS"), "{err}");
}

#[test]
fn environment_overrides_defaults() {
    let s = load(&[
        ("OPENBATCH__SERVER__PORT", "9999"),
        ("OPENBATCH__SERVER__HOST", "0.0.0.0"),
        ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
        ("OPENBATCH__LOG__FORMAT", "json"),
    ])
    .unwrap();
    assert_eq!(s.server.port, 9999);
    assert_eq!(s.server.host, "0.0.0.0");
    assert_eq!(s.database.url.expose_secret(), "postgres://a@b/c");
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn allowed_hosts_are_a_comma_separated_list_and_other_values_keep_their_commas() {
    assert!(load(&[]).unwrap().server.allowed_hosts.is_empty());
    let s = load(&[
        (
            "OPENBATCH__SERVER__ALLOWED_HOSTS",
            "batch.internal,10.0.0.5",
        ),
        ("OPENBATCH__DATABASE__URL", "postgres://x@y/z?options=a,b"),
    ])
    .unwrap();
    assert_eq!(s.server.allowed_hosts, ["batch.internal", "10.0.0.5"]);
    assert_eq!(
        s.database.url.expose_secret(),
        "postgres://x@y/z?options=a,b"
    );
}

#[test]
fn metrics_url_is_discovered_off_or_one_server_s_url() {
    use super::MetricsSource;
    let s = load(&[]).unwrap();
    assert!(s.upstream.adaptive);
    assert_eq!(s.upstream.metrics_source(), MetricsSource::Discover);
    assert_eq!(s.upstream.priority, None);
    let off = load(&[("OPENBATCH__UPSTREAM__METRICS_URL", "off")]).unwrap();
    assert_eq!(off.upstream.metrics_source(), MetricsSource::Off);
    let at = (
        "OPENBATCH__UPSTREAM__METRICS_URL",
        "http://gpu:8000/metrics",
    );
    assert!(load(&[at]).is_ok());
    let two = (
        "OPENBATCH__UPSTREAM__BASE_URLS",
        "http://a:1/v1,http://b:1/v1",
    );
    let err = format!("{:#}", load(&[at, two]).unwrap_err());
    assert!(err.contains("OPENBATCH__UPSTREAM__METRICS_URL"), "{err}");
    let bad = ("OPENBATCH__UPSTREAM__METRICS_URL", "gpu:8000/metrics");
    let err = format!("{:#}", load(&[bad]).unwrap_err());
    assert!(err.contains("OPENBATCH__UPSTREAM__METRICS_URL"), "{err}");
    let p = load(&[("OPENBATCH__UPSTREAM__PRIORITY", "10")]).unwrap();
    assert_eq!(p.upstream.priority, Some(10));
}

#[test]
fn database_url_is_a_fallback_only() {
    let s = load(&[("DATABASE_URL", "postgres://x@y/z")]).unwrap();
    assert_eq!(s.database.url.expose_secret(), "postgres://x@y/z");
    let s = load(&[
        ("DATABASE_URL", "postgres://x@y/z"),
        ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
    ])
    .unwrap();
    assert_eq!(s.database.url.expose_secret(), "postgres://a@b/c");
}

#[test]
fn a_bad_setting_names_itself() {
    let err = format!(
        "{:#}",
        load(&[("OPENBATCH__SERVER__PORT", "eighty")]).unwrap_err()
    );
    assert!(err.contains("server.port"), "{err}");
    let err = format!(
        "{:#}",
        load(&[("OPENBATCH__DATABASE__MAX_CONNECTIONS", "0")]).unwrap_err()
    );
    assert!(
        err.contains("OPENBATCH__DATABASE__MAX_CONNECTIONS"),
        "{err}"
    );
}

#[test]
fn a_replica_running_workers_needs_two_connections() {
    let one = ("OPENBATCH__DATABASE__MAX_CONNECTIONS", "1");
    let err = format!("{:#}", load(&[one]).unwrap_err());
    assert!(err.contains("at least 2"), "{err}");
    let api_only = load(&[one, ("OPENBATCH__WORKER__ENABLED", "false")]).unwrap();
    assert_eq!(api_only.database.max_connections, 1);
}

#[test]
fn an_upstream_base_url_must_be_a_url() {
    for bad in ["127.0.0.1:8000/v1", "http://exa mple/v1", "https://"] {
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__UPSTREAM__BASE_URL", bad)]).unwrap_err()
        );
        assert!(
            err.contains("OPENBATCH__UPSTREAM__BASE_URL"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_engine_runs_on_one_thread_unless_told_otherwise() {
    assert_eq!(load(&[]).unwrap().worker.threads, 1);
    let s = load(&[("OPENBATCH__WORKER__THREADS", "4")]).unwrap();
    assert_eq!(s.worker.threads, 4);
    let err = format!(
        "{:#}",
        load(&[("OPENBATCH__WORKER__THREADS", "0")]).unwrap_err()
    );
    assert!(err.contains("OPENBATCH__WORKER__THREADS"), "{err}");
}

#[test]
fn upload_and_metrics_settings_must_be_positive() {
    let s = load(&[]).unwrap();
    assert_eq!(s.limits.max_concurrent_uploads, 8);
    assert_eq!(s.limits.max_stored_bytes_per_project, 2_500_000_000_000);
    assert_eq!(s.server.metrics_address, None);
    for (name, value) in [
        ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS", "0"),
        ("OPENBATCH__LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "0"),
        ("OPENBATCH__SERVER__METRICS_REFRESH_SECS", "0"),
    ] {
        let err = format!("{:#}", load(&[(name, value)]).unwrap_err());
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn per_project_shares_default_to_unset_and_stay_within_their_totals() {
    let s = load(&[]).unwrap();
    assert_eq!(s.limits.max_event_streams_per_project, None);
    assert_eq!(s.limits.max_live_readers, 64);
    assert_eq!(s.limits.live_read_idle_timeout_secs, 30);
    let s = load(&[("OPENBATCH__LIMITS__MAX_LIVE_READERS_PER_PROJECT", "3")]).unwrap();
    assert_eq!(s.limits.max_live_readers_per_project, Some(3));
    for (name, value) in [
        ("OPENBATCH__LIMITS__MAX_EVENT_STREAMS_PER_PROJECT", "257"),
        ("OPENBATCH__LIMITS__MAX_CONCURRENT_UPLOADS_PER_PROJECT", "0"),
        ("OPENBATCH__LIMITS__MAX_LIVE_READERS_PER_PROJECT", "65"),
        ("OPENBATCH__LIMITS__LIVE_READ_IDLE_TIMEOUT_SECS", "0"),
    ] {
        let err = format!("{:#}", load(&[(name, value)]).unwrap_err());
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn upstream_settings_and_routes() {
    let s = load(&[
        ("OPENBATCH__UPSTREAM__BASE_URL", "http://vllm:8000/v1"),
        ("OPENBATCH__UPSTREAM__API_KEY", "sk-upstream"),
        ("OPENBATCH__ROUTES__EMBED__BASE_URL", "http://tei:80/v1"),
        ("OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT", "8"),
    ])
    .unwrap();
    assert_eq!(s.upstream.base_url, "http://vllm:8000/v1");
    assert_eq!(
        s.upstream.api_key.as_ref().unwrap().expose_secret(),
        "sk-upstream"
    );
    assert_eq!(s.routes["embed"].max_in_flight, 8);
    assert!(!format!("{s:?}").contains("sk-upstream"));
    let err = format!(
        "{:#}",
        load(&[("OPENBATCH__UPSTREAM__BASE_URL", "vllm:8000")]).unwrap_err()
    );
    assert!(err.contains("OPENBATCH__UPSTREAM__BASE_URL"), "{err}");
}

#[test]
fn pools_are_lists_in_the_environment_for_the_default_upstream_and_each_route() {
    let s = load(&[]).unwrap();
    assert_eq!(s.upstream.endpoints(), [DEFAULT_UPSTREAM_URL]);
    let s = load(&[
        (
            "OPENBATCH__UPSTREAM__BASE_URLS",
            "http://gpu-1:8000/v1,http://gpu-2:8000/v1",
        ),
        (
            "OPENBATCH__ROUTES__EMBED__BASE_URLS",
            "http://tei-1/v1,http://tei-2/v1",
        ),
        ("OPENBATCH__ROUTES__EMBED__MODELS", "embed-*"),
        ("OPENBATCH__ROUTES__Chat_Big__BASE_URLS", "http://big/v1"),
        (
            "OPENBATCH__ROUTES__SMALL__BASE_URL",
            "http://small/v1?x=a,b",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.upstream.endpoints(),
        ["http://gpu-1:8000/v1", "http://gpu-2:8000/v1"]
    );
    assert_eq!(
        s.routes["embed"].endpoints(),
        ["http://tei-1/v1", "http://tei-2/v1"]
    );
    assert_eq!(s.routes["chat_big"].endpoints(), ["http://big/v1"]);
    // A single URL keeps its commas.
    assert_eq!(s.routes["small"].endpoints(), ["http://small/v1?x=a,b"]);
}

#[test]
fn pools_in_the_configuration_file() {
    let path = std::env::temp_dir().join(format!(
        "openbatch-pools-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &path,
        "[upstream]\nbase_urls = [\"http://a/v1\", \"http://b/v1/\"]\nmax_in_flight = 40\n\
         [routes.embed]\nbase_url = \"http://e/v1\"\nmodels = [\"embed-*\"]\n\
         [routes.empty]\nbase_urls = []\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let err = format!("{:#}", load(&[("OPENBATCH_CONFIG", file)]).unwrap_err());
    assert!(err.contains("routes.empty.base_urls"), "{err}");
    assert!(err.contains("OPENBATCH__ROUTES__EMPTY__BASE_URLS"), "{err}");
    std::fs::write(
        &path,
        "[upstream]\nbase_urls = [\"http://a/v1\", \"http://b/v1/\"]\nmax_in_flight = 40\n\
         [routes.embed]\nbase_url = \"http://e/v1\"\nmodels = [\"embed-*\"]\n",
    )
    .unwrap();
    let s = load(&[("OPENBATCH_CONFIG", file)]).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(s.upstream.endpoints(), ["http://a/v1", "http://b/v1/"]);
    assert_eq!(s.upstream.max_in_flight, 40);
    assert_eq!(s.routes["embed"].endpoints(), ["http://e/v1"]);
}

#[test]
fn a_bad_pool_stops_the_process_naming_the_setting() {
    for (vars, named) in [
        (
            vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,,http://b/v1")],
            "OPENBATCH__UPSTREAM__BASE_URLS",
        ),
        (
            vec![("OPENBATCH__UPSTREAM__BASE_URLS", ",")],
            "OPENBATCH__UPSTREAM__BASE_URLS",
        ),
        (
            vec![(
                "OPENBATCH__UPSTREAM__BASE_URLS",
                "http://a/v1,gpu-2:8000/v1",
            )],
            "OPENBATCH__UPSTREAM__BASE_URLS",
        ),
        (
            vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,ftp://b/v1")],
            "OPENBATCH__UPSTREAM__BASE_URLS",
        ),
        (
            vec![("OPENBATCH__UPSTREAM__BASE_URLS", "http://a/v1,http://a/v1/")],
            "twice",
        ),
        (
            vec![(
                "OPENBATCH__ROUTES__EMBED__BASE_URLS",
                "http://a/v1,not a url",
            )],
            "OPENBATCH__ROUTES__EMBED__BASE_URLS",
        ),
        (
            vec![
                ("OPENBATCH__UPSTREAM__BASE_URL", "http://a/v1"),
                ("OPENBATCH__UPSTREAM__BASE_URLS", "http://b/v1"),
            ],
            "OPENBATCH__UPSTREAM__BASE_URL, OPENBATCH__UPSTREAM__BASE_URLS",
        ),
        (
            vec![("OPENBATCH__ROUTES__EMBED__MODELS", "embed-*")],
            "OPENBATCH__ROUTES__EMBED__BASE_URL",
        ),
        (
            vec![("OPENBATCH__UPSTREAM__MAX_IN_FLIGHT", "0")],
            "OPENBATCH__UPSTREAM__MAX_IN_FLIGHT",
        ),
        (
            vec![
                ("OPENBATCH__ROUTES__EMBED__BASE_URLS", "http://a/v1"),
                ("OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT", "0"),
            ],
            "OPENBATCH__ROUTES__EMBED__MAX_IN_FLIGHT",
        ),
    ] {
        let err = format!("{:#}", load(&vars).unwrap_err());
        assert!(err.contains(named), "{vars:?}: {err}");
    }
}

#[test]
fn secrets_do_not_print() {
    let s = load(&[
        ("OPENBATCH__DATABASE__URL", "postgres://u:hunter2@h/d"),
        ("OPENBATCH__UPSTREAM__API_KEY", "sk-hunter3"),
    ])
    .unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
    // Settings serialize (the defaults listed for the docs) with their secrets masked too.
    let shown = serde_json::to_string(&s).unwrap();
    assert!(
        !shown.contains("hunter2") && !shown.contains("hunter3"),
        "{shown}"
    );
    assert!(shown.contains("postgres://u:***@h/d"), "{shown}");
    assert_eq!(
        redact_url("postgres://u:hunter2@h/d"),
        "postgres://u:***@h/d"
    );
    assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
}

#[test]
fn redaction_parses_the_url() {
    for (raw, secret) in [
        ("postgres://u:p@ss:w/rd@h:5432/d", "p@ss"),
        ("postgres://u:p%40ss@h/d", "p%40ss"),
        (
            "postgres://u@h/d?password=hunter2&sslmode=require",
            "hunter2",
        ),
        (
            "postgres://u@h/d?sslmode=verify-full&sslpassword=keypass",
            "keypass",
        ),
        ("postgres://u:hunter2@h1,h2:5433/d", "hunter2"),
        ("postgres://u:hunter2@[::1]:5432/d?PASSWORD=again", "again"),
        ("not a url u:hunter2@h", "hunter2"),
    ] {
        let shown = redact_url(raw);
        assert!(!shown.contains(secret), "{raw} -> {shown}");
        assert!(!shown.contains("hunter2"), "{raw} -> {shown}");
    }
    assert_eq!(
        redact_url("postgres://u:p@ss@h:5432/d?sslmode=require&password=x"),
        "postgres://u:***@h:5432/d?sslmode=require&password=***"
    );
    assert_eq!(
        redact_url("postgres://u:hunter2@h1,h2/db"),
        "postgres://u:***@h1,h2/db"
    );
}

#[test]
fn anonymous_serving_only_on_loopback_unless_allowed() {
    let ok = |vars: &[(&str, &str)]| load(vars).unwrap().check_serving();
    assert!(ok(&[]).is_ok());
    assert!(ok(&[("OPENBATCH__SERVER__HOST", "::1")]).is_ok());
    assert!(ok(&[("OPENBATCH__SERVER__HOST", "localhost")]).is_ok());
    for host in ["0.0.0.0", "::", "10.1.2.3", "openbatch.example"] {
        let err = ok(&[("OPENBATCH__SERVER__HOST", host)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OPENBATCH__AUTH__ALLOW_ANONYMOUS"), "{err}");
        assert!(ok(&[
            ("OPENBATCH__SERVER__HOST", host),
            ("OPENBATCH__AUTH__ENABLED", "true")
        ])
        .is_ok());
        assert!(ok(&[
            ("OPENBATCH__SERVER__HOST", host),
            ("OPENBATCH__AUTH__ALLOW_ANONYMOUS", "true")
        ])
        .is_ok());
    }
}

#[test]
fn completion_windows_and_the_event_poll_are_checked() {
    let s = load(&[("OPENBATCH__BATCHES__COMPLETION_WINDOWS", "1h,24h")]).unwrap();
    assert_eq!(s.batches.completion_windows, ["1h", "24h"]);
    for (key, value, named) in [
        (
            "OPENBATCH__BATCHES__COMPLETION_WINDOWS",
            "24h,2h",
            "COMPLETION_WINDOWS",
        ),
        ("OPENBATCH__LIMITS__EVENT_POLL_MS", "0", "EVENT_POLL_MS"),
    ] {
        let err = format!("{:#}", load(&[(key, value)]).unwrap_err());
        assert!(err.contains(named), "{key}={value}: {err}");
    }
    // An empty list (a config file's `completion_windows = []`; an empty variable is unset).
    let none = super::BatchSettings {
        completion_windows: Vec::new(),
        ..Default::default()
    };
    assert!(format!("{:#}", none.check().unwrap_err()).contains("COMPLETION_WINDOWS"));
}

#[test]
fn the_s3_backend_needs_a_bucket_and_a_request_timeout() {
    let s3 = ("OPENBATCH__STORAGE__BACKEND", "s3");
    let err = format!("{:#}", load(&[s3]).unwrap_err());
    assert!(err.contains("OPENBATCH__STORAGE__S3__BUCKET"), "{err}");
    let bucket = ("OPENBATCH__STORAGE__S3__BUCKET", "files");
    let s = load(&[s3, bucket]).unwrap();
    assert_eq!(
        (s.storage.s3.request_timeout_secs, s.storage.s3.retry_secs),
        (30, 180)
    );
    let zero = ("OPENBATCH__STORAGE__S3__REQUEST_TIMEOUT_SECS", "0");
    let err = format!("{:#}", load(&[s3, bucket, zero]).unwrap_err());
    assert!(
        err.contains("OPENBATCH__STORAGE__S3__REQUEST_TIMEOUT_SECS"),
        "{err}"
    );
}
