use std::collections::HashMap;

use anyhow::Context;

use super::Settings;

impl Settings {
    pub fn load() -> anyhow::Result<Settings> {
        Self::load_from(std::env::vars().collect())
    }

    /// The environment is injected so tests can load settings without touching the process's.
    /// Defaults are not a layer here: a setting no source gives takes its section's `Default`.
    pub fn load_from(vars: HashMap<String, String>) -> anyhow::Result<Settings> {
        let env = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        let mut builder = config::Config::builder();
        builder = match env("OPENBATCH_CONFIG") {
            Some(path) => builder.add_source(config::File::with_name(&path).required(true)),
            None => builder.add_source(config::File::with_name("config/openbatch").required(false)),
        };
        builder = builder.add_source(environment(&vars));
        for (standard, ours) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "telemetry.otlp_protocol"),
            ("OTEL_SERVICE_NAME", "telemetry.service_name"),
        ] {
            if let Some(v) = env(standard) {
                builder = builder.set_override(ours, v)?;
            }
        }
        if env("OPENBATCH__DATABASE__URL").is_none() {
            if let Some(url) = env("DATABASE_URL") {
                builder = builder.set_override("database.url", url)?;
            }
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .context(
                "invalid configuration; settings come from config/openbatch.toml (or OPENBATCH_CONFIG) \
                 and OPENBATCH__SECTION__KEY environment variables, e.g. OPENBATCH__SERVER__PORT=8080",
            )?;
        let settings = settings.with_default_upstream();
        settings.check()?;
        Ok(settings)
    }
}

/// The `OPENBATCH__SECTION__KEY` variables (empty ones are unset).
fn environment(vars: &HashMap<String, String>) -> config::Environment {
    let ours: config::Map<String, String> = vars
        .iter()
        .filter(|(k, v)| k.starts_with("OPENBATCH__") && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut environment = config::Environment::with_prefix("OPENBATCH")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        // Lists are comma-separated in the environment (only these keys: a comma in
        // any other value, such as a URL's query, stays as it is).
        .list_separator(",")
        .with_list_parse_key("server.allowed_hosts")
        .with_list_parse_key("batches.completion_windows");
    // Each route's lists too (its pool, its models): the crate matches list keys exactly,
    // so the routes named in the environment are registered one by one.
    for key in ours.keys() {
        let key = key.to_lowercase();
        if key.ends_with("__base_urls")
            || (key.starts_with("openbatch__routes__") && key.ends_with("__models"))
        {
            let path = key.trim_start_matches("openbatch__").replace("__", ".");
            environment = environment.with_list_parse_key(&path);
        }
    }
    environment.source(Some(ours))
}
